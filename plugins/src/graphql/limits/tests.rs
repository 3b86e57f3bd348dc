use super::*;
use serde_json::json;

fn limits() -> Limits {
    Limits {
        introspection: true,
        ..Limits::default()
    }
}

fn measure(query: &str) -> Checked {
    check(
        query,
        None,
        &Map::new(),
        &Limits {
            max_depth: usize::MAX,
            max_complexity: usize::MAX,
            max_aliases: usize::MAX,
            max_query_size: usize::MAX,
            introspection: true,
        },
        None,
    )
    .unwrap_or_else(|e| panic!("{query}: {e}"))
}

fn vars(v: serde_json::Value) -> Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// A schema: `Query.users: [User]`, `Query.me: User`, `User.friends: [User]`,
/// `User.name: String`, `User.posts: [Post]`, `Post.title: String`.
struct Shop;

impl Shape for Shop {
    fn root(&self, op: OperationType) -> Option<&str> {
        (op == OperationType::Query).then_some("Query")
    }
    fn field(&self, parent: &str, field: &str) -> Option<FieldShape<'_>> {
        let (type_name, list) = match (parent, field) {
            ("Query", "users") => ("User", true),
            ("Query", "me") => ("User", false),
            ("User", "friends") => ("User", true),
            ("User", "posts") => ("Post", true),
            ("User", "name") | ("Post", "title") => ("String", false),
            _ => return None,
        };
        Some(FieldShape { type_name, list })
    }
}

#[test]
fn depth_counts_root_fields_as_one_and_sees_through_fragments() {
    let table = [
        ("{ a }", 1),
        ("{ a b c }", 1),
        ("{ a { b } }", 2),
        ("{ a { b { c } } d }", 3),
        ("{ a { ... on T { b { c } } } }", 3),
        ("query { a { ...F } } fragment F on T { b { c { d } } }", 4),
        (
            "{ ...F } fragment F on Query { a { ...G } } fragment G on T { b }",
            2,
        ),
        ("{ __typename }", 1),
    ];
    for (query, depth) in table {
        assert_eq!(measure(query).depth, depth, "{query}");
    }
}

#[test]
fn aliases_are_counted_in_every_expansion() {
    let table = [
        ("{ a }", 0),
        ("{ x: a y: a }", 2),
        ("{ x: a { y: b } }", 2),
        ("{ ...F ...F } fragment F on Query { x: a y: a }", 4),
        ("{ a { ... on T { z: b } } }", 1),
    ];
    for (query, aliases) in table {
        assert_eq!(measure(query).aliases, aliases, "{query}");
    }
}

#[test]
fn complexity_multiplies_lists_by_their_count() {
    let table = [
        ("{ a }", 1),
        ("{ a b }", 2),
        ("{ a { b c } }", 3),
        // 1 + 5 * (name + posts (1 + title))
        ("{ users(first: 5) { name posts { title } } }", 16),
        // 1 + 20 * 1
        ("{ users(limit: 20) { name } }", 21),
        ("{ users(first: 2, last: 7) { name } }", 8),
        // 1 + 3 * (1 + 4 * 1)
        ("{ users(first: 3) { friends(first: 4) { name } } }", 16),
        // a count on a leaf: the leaf costs 1
        ("{ tags(first: 100) }", 1),
        // first: 0 still costs its selections once
        ("{ users(first: 0) { name } }", 2),
        // a count that is not a count is ignored
        ("{ users(first: -3) { name } }", 2),
        ("{ users(first: \"9\") { name } }", 2),
        (
            "{ ...F ...F } fragment F on Query { users(first: 2) { name } }",
            6,
        ),
    ];
    for (query, complexity) in table {
        assert_eq!(measure(query).complexity, complexity, "{query}");
    }
}

#[test]
fn counts_come_from_variables_and_their_defaults() {
    let q = "query Q($n: Int = 4) { users(first: $n) { name } }";
    let all = Limits {
        max_complexity: usize::MAX,
        ..limits()
    };
    let with = |v| check(q, None, &vars(v), &all, None).unwrap().complexity;
    assert_eq!(with(json!({"n": 9})), 10);
    assert_eq!(with(json!({})), 5, "the default");
    assert_eq!(with(json!({"n": null})), 2, "null: no count");
    let no_default = "query Q($n: Int) { users(first: $n) { name } }";
    assert_eq!(
        check(no_default, None, &vars(json!({"n": 50})), &all, None)
            .unwrap()
            .complexity,
        51
    );
}

#[test]
fn the_schema_marks_lists_without_a_count() {
    let all = Limits {
        max_complexity: usize::MAX,
        ..limits()
    };
    let cost = |q: &str| {
        check(q, None, &Map::new(), &all, Some(&Shop))
            .unwrap()
            .complexity
    };
    // 1 + DEFAULT_LIST_SIZE * 1
    assert_eq!(cost("{ users { name } }"), 1 + DEFAULT_LIST_SIZE);
    assert_eq!(cost("{ me { name } }"), 2);
    // 1 + 10 * (1 + 10 * 1)
    assert_eq!(cost("{ users { friends { name } } }"), 1 + 10 * (1 + 10));
    assert_eq!(
        cost("{ users(first: 2) { friends { name } } }"),
        1 + 2 * (1 + 10)
    );
    // Fragments carry their own type: User.posts is a list.
    assert_eq!(
        cost("{ me { ...P } } fragment P on User { posts { title } }"),
        1 + (1 + 10)
    );
    assert_eq!(
        cost("{ me { ... on User { posts { title } } } }"),
        1 + (1 + 10)
    );
    // Without the schema, only a count marks a list.
    assert_eq!(measure("{ users { friends { name } } }").complexity, 3);
}

#[test]
fn each_limit_refuses_with_the_limit_and_the_measure() {
    let limits = Limits {
        max_depth: 3,
        max_complexity: 20,
        max_aliases: 2,
        max_query_size: 200,
        introspection: false,
    };
    let long = format!("{{ {} }}", "a ".repeat(150));
    let table: [(&str, &str, &str); 5] = [
        (
            "{ a { b { c { d } } } }",
            code::MAX_DEPTH_EXCEEDED,
            "query depth 4 exceeds max_depth 3",
        ),
        (
            "{ x: a y: a z: a }",
            code::MAX_ALIASES_EXCEEDED,
            "query aliases 3 exceeds max_aliases 2",
        ),
        (
            "{ users(first: 10) { name posts { title } } }",
            code::MAX_COMPLEXITY_EXCEEDED,
            "query complexity 31 exceeds max_complexity 20",
        ),
        (
            &long,
            code::QUERY_TOO_LARGE,
            "query size 304 bytes exceeds max_query_size 200",
        ),
        (
            "{ __schema { types { name } } }",
            code::INTROSPECTION_DISABLED,
            "introspection is disabled: the query selects __schema",
        ),
    ];
    for (query, code, message) in table {
        let err = check(query, None, &Map::new(), &limits, None).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (code, message), "{query}");
    }
    // At the limits exactly, it passes.
    let ok = check(
        "{ a { b { x: c y: d } } }",
        None,
        &Map::new(),
        &limits,
        None,
    )
    .unwrap();
    assert_eq!((ok.depth, ok.aliases, ok.complexity), (3, 2, 4));
}

#[test]
fn introspection_is_found_anywhere_but_typename_is_always_allowed() {
    let off = Limits::default();
    for query in [
        "{ __schema { queryType { name } } }",
        "{ __type(name: \"User\") { name } }",
        "{ me { __type(name: \"X\") { name } } }",
        "{ ...F } fragment F on Query { __schema { types { name } } }",
        "{ ... on Query { __type(name: \"A\") { name } } }",
    ] {
        let err = check(query, None, &Map::new(), &off, None).unwrap_err();
        assert_eq!(err.code, code::INTROSPECTION_DISABLED, "{query}");
    }
    assert!(check(
        "{ me { __typename } __typename }",
        None,
        &Map::new(),
        &off,
        None
    )
    .is_ok());
    assert!(check(
        "{ __schema { queryType { name } } }",
        None,
        &Map::new(),
        &limits(),
        None
    )
    .is_ok());
}

#[test]
fn fragment_cycles_and_unknown_fragments_are_refused_not_followed() {
    for (query, why) in [
        ("{ ...A } fragment A on Query { ...A }", "spreads itself"),
        (
            "{ ...A } fragment A on Query { b { ...B } } fragment B on T { ...A }",
            "spreads itself",
        ),
        (
            "{ ... on Query { ...A } } fragment A on Query { ... on Query { ...A } }",
            "spreads itself",
        ),
        ("{ ...Missing }", "unknown fragment \"Missing\""),
    ] {
        let err = check(query, None, &Map::new(), &limits(), None).unwrap_err();
        assert_eq!(err.code, code::GRAPHQL_VALIDATION_FAILED, "{query}");
        assert!(err.message.contains(why), "{query}: {}", err.message);
    }
}

#[test]
fn fragments_that_fan_out_are_measured_without_expanding_them() {
    // 2^30 leaves once expanded: measured in microseconds, refused on complexity.
    let mut query = String::from("{ ...F0 } fragment F30 on Query { a }\n");
    for i in 0..30 {
        query.push_str(&format!(
            "fragment F{i} on Query {{ ...F{n} ...F{n} }}\n",
            n = i + 1
        ));
    }
    let err = check(&query, None, &Map::new(), &limits(), None).unwrap_err();
    assert_eq!(err.code, code::MAX_COMPLEXITY_EXCEEDED);
    assert!(
        err.message
            .contains(&format!("complexity {}", 1usize << 30)),
        "{}",
        err.message
    );
}

#[test]
fn the_operation_is_the_named_one_or_the_only_one() {
    let doc = "query A { a } mutation B { b }";
    let a = check(doc, Some("A"), &Map::new(), &limits(), None).unwrap();
    assert_eq!(a.operation_name.as_deref(), Some("A"));
    assert_eq!(a.operation_type, OperationType::Query);
    let b = check(doc, Some("B"), &Map::new(), &limits(), None).unwrap();
    assert_eq!(b.operation_type, OperationType::Mutation);
    assert!(b.operation().is_some());
    for (doc, name, why) in [
        (doc, None, "operationName must say which"),
        (doc, Some("C"), "no operation named \"C\""),
        ("{ a }", Some("A"), "anonymous"),
    ] {
        let err = check(doc, name, &Map::new(), &limits(), None).unwrap_err();
        assert_eq!(err.code, code::BAD_REQUEST);
        assert!(err.message.contains(why), "{}", err.message);
    }
    let only = check("query Only { a }", None, &Map::new(), &limits(), None).unwrap();
    assert_eq!(only.operation_name.as_deref(), Some("Only"));
    let anonymous = check("{ a }", None, &Map::new(), &limits(), None).unwrap();
    assert_eq!(anonymous.operation_name, None);
}

#[test]
fn what_does_not_parse_is_a_parse_failure() {
    for query in [
        "",
        "{",
        "query { a(: 1) }",
        "{ a } { b }",
        "fragment F on T { a }",
    ] {
        let err = check(query, None, &Map::new(), &limits(), None).unwrap_err();
        assert!(
            err.code == code::GRAPHQL_PARSE_FAILED,
            "{query}: {} {}",
            err.code,
            err.message
        );
    }
}

#[test]
fn brackets_nested_past_the_parser_are_refused_before_it_runs() {
    let deep = format!("{}{}", "{a".repeat(8000), "}".repeat(8000));
    let list = format!("{{ a(x: {}1{}) }}", "[".repeat(16000), "]".repeat(16000));
    let big = Limits {
        max_query_size: 64 * 1024,
        ..limits()
    };
    for query in [deep, list] {
        // On a thread with a small stack, as a server's may be.
        let big = big.clone();
        let err = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || check(&query, None, &Map::new(), &big, None).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(err.code, code::GRAPHQL_PARSE_FAILED);
    }
    // Up to the bound, the parser runs within a server thread's stack (tokio's: 2 MiB), even
    // in a debug build: it refuses the selections, parses the list.
    let at_bound = [
        format!("{}{}", "{a".repeat(MAX_NESTING), "}".repeat(MAX_NESTING)),
        format!(
            "{{ a(x: {}1{}) }}",
            "[".repeat(MAX_NESTING - 1),
            "]".repeat(MAX_NESTING - 1)
        ),
    ];
    for query in at_bound {
        let big = big.clone();
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || drop(check(&query, None, &Map::new(), &big, None)))
            .unwrap()
            .join()
            .unwrap();
    }
    // Brackets in strings and comments do not count.
    let quoted = format!(
        "{{ a(x: \"{}\", y: \"\"\"{}\"\"\") # {}\n }}",
        "{".repeat(500),
        "[".repeat(500),
        "{".repeat(500)
    );
    assert!(!nesting_exceeds(&quoted, MAX_NESTING));
    assert!(nesting_exceeds(&"{".repeat(MAX_NESTING + 1), MAX_NESTING));
    assert!(!nesting_exceeds(&"{".repeat(MAX_NESTING), MAX_NESTING));
}

#[test]
fn limits_read_from_config_with_defaults() {
    let parsed: Limits = toml::from_str("max_depth = 5\nmax_query_size = \"8KiB\"").unwrap();
    assert_eq!(
        parsed,
        Limits {
            max_depth: 5,
            max_query_size: 8192,
            ..Limits::default()
        }
    );
    assert_eq!(Limits::default().max_complexity, 1000);
    assert_eq!(Limits::default().max_aliases, 30);
    assert_eq!(Limits::default().max_query_size, 16 * 1024);
    assert!(!Limits::default().introspection);
    assert!(toml::from_str::<Limits>("max_dept = 5").is_err());
    assert!(toml::from_str::<Limits>("max_query_size = 100").is_err());
}

#[test]
fn the_name_is_known_even_when_a_limit_refuses() {
    let shallow = Limits {
        max_depth: 2,
        ..limits()
    };
    let (name, checked) = check_named(
        "query Deep { a { b { c } } }",
        None,
        &Map::new(),
        &shallow,
        None,
    );
    assert_eq!(name.as_deref(), Some("Deep"));
    assert_eq!(checked.unwrap_err().code, code::MAX_DEPTH_EXCEEDED);
    let (name, checked) = check_named(
        "query Broken {",
        Some("Broken"),
        &Map::new(),
        &shallow,
        None,
    );
    assert_eq!(
        name.as_deref(),
        Some("Broken"),
        "what the client said, when nothing parsed"
    );
    assert!(checked.is_err());
    let (name, _) = check_named("query Broken {", None, &Map::new(), &shallow, None);
    assert_eq!(name, None);
}

#[test]
fn an_allowed_introspection_query_is_not_held_to_the_depth_of_the_data() {
    // The shape of the standard introspection query's TypeRef fragment: 9 levels of ofType.
    let deep = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } } }";
    let on = Limits {
        max_depth: 3,
        introspection: true,
        ..Limits::default()
    };
    let checked = check(deep, None, &Map::new(), &on, None).unwrap();
    assert_eq!((checked.depth, checked.complexity), (1, 1));
    // The data beside it still counts.
    let both = format!(
        "{{ a {{ b {{ c {{ d }} }} }} {} }}",
        &deep[1..deep.len() - 1]
    );
    let err = check(&both, None, &Map::new(), &on, None).unwrap_err();
    assert_eq!(err.code, code::MAX_DEPTH_EXCEEDED);
}
