//! Templates in a composition's calls: `/users/{user_id}`, `{query.page}`, `{consumer}`,
//! `{claim.sub}`, `{user.id}`, `{recentOrders[0].id}`, `{item.sku}`. Parsed once when the
//! config is compiled; a reference to another call's result is a dependency on that call.

use serde_json::Value;

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path capture of the route.
    Capture(String),
    Query(String),
    Consumer,
    Claim(String),
    /// A field of another call's JSON result: the call's key and the path inside it.
    Result(String, Vec<Step>),
    /// The current element of `for_each`, and a path inside it.
    Item(Vec<Step>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part<S> {
    Text(String),
    Value(S),
}

/// Text with placeholders, each classified by the scope it reads from (`S`: a composition's
/// `Source`, or a GraphQL resolver's own scopes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<S = Source> {
    parts: Vec<Part<S>>,
}

/// Parse `a.b[0].c` into steps.
pub fn parse_path(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for segment in text.split('.') {
        let (name, mut rest) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            steps.push(Step::Field(name.to_string()));
        } else if rest.is_empty() {
            return Err(format!("empty field in \"{text}\""));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let close = inner
                .find(']')
                .ok_or_else(|| format!("unclosed \"[\" in \"{text}\""))?;
            let index = inner[..close]
                .parse()
                .map_err(|_| format!("\"{}\" is not an index in \"{text}\"", &inner[..close]))?;
            steps.push(Step::Index(index));
            rest = &inner[close + 1..];
        }
        if !rest.is_empty() {
            return Err(format!("unexpected \"{rest}\" in \"{text}\""));
        }
    }
    Ok(steps)
}

/// Follow steps into a JSON value.
pub fn lookup<'a>(mut value: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    for step in steps {
        value = match step {
            Step::Field(name) => value.get(name)?,
            Step::Index(i) => value.get(*i)?,
        };
    }
    Some(value)
}

impl Template {
    /// `captures`: the route's capture names; `calls`: every call key of the composition.
    pub fn parse(text: &str, captures: &[String], calls: &[String]) -> Result<Template, String> {
        Template::parse_with(text, |name| source(name, captures, calls))
    }

    /// The other calls this template reads.
    pub fn dependencies(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(Source::Result(key, _)) => Some(key.as_str()),
            _ => None,
        })
    }

    pub fn uses_item(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Value(Source::Item(_))))
    }
}

impl<S: std::fmt::Debug> Template<S> {
    /// Split `text` at its `{placeholders}`, each classified by `classify` (given the name
    /// between the braces, trimmed).
    pub fn parse_with(
        text: &str,
        classify: impl Fn(&str) -> Result<S, String>,
    ) -> Result<Template<S>, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed \"{{\" in \"{text}\""))?
                + open;
            parts.push(Part::Text(rest[..open].to_string()));
            parts.push(Part::Value(classify(rest[open + 1..close].trim())?));
            rest = &rest[close + 1..];
        }
        parts.push(Part::Text(rest.to_string()));
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        Ok(Template { parts })
    }

    /// Every placeholder, in order.
    pub fn sources(&self) -> impl Iterator<Item = &S> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(s) => Some(s),
            Part::Text(_) => None,
        })
    }

    /// The placeholder this template is, when it is nothing but one (`"{sibling.orders}"`):
    /// a JSON body then takes the value itself, not its text.
    pub fn only_source(&self) -> Option<&S> {
        match self.parts.as_slice() {
            [Part::Value(s)] => Some(s),
            _ => None,
        }
    }

    /// Fill in the placeholders; `Err` names the one that has no value.
    pub fn render(&self, resolve: &dyn Fn(&S) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Value(source) => out
                    .push_str(&resolve(source).ok_or_else(|| format!("no value for {source:?}"))?),
            }
        }
        Ok(out)
    }
}

fn source(name: &str, captures: &[String], calls: &[String]) -> Result<Source, String> {
    let name = name.trim();
    if captures.iter().any(|c| c == name) {
        return Ok(Source::Capture(name.to_string()));
    }
    if name == "consumer" {
        return Ok(Source::Consumer);
    }
    if let Some(q) = name.strip_prefix("query.") {
        return Ok(Source::Query(q.to_string()));
    }
    if let Some(c) = name.strip_prefix("claim.") {
        return Ok(Source::Claim(c.to_string()));
    }
    let steps = parse_path(name)?;
    match steps.first() {
        Some(Step::Field(first)) if first == "item" => Ok(Source::Item(steps[1..].to_vec())),
        Some(Step::Field(first)) if calls.contains(first) => Ok(Source::Result(first.clone(), steps[1..].to_vec())),
        _ => Err(format!(
            "\"{{{name}}}\" is not a path capture, query.NAME, consumer, claim.NAME, item, or another call's key"
        )),
    }
}

/// A JSON scalar as template text.
pub fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_are_classified_when_the_config_is_compiled() {
        let calls = vec!["user".to_string(), "recentOrders".to_string()];
        let t = Template::parse(
            "/orders/{recentOrders[0].id}/by/{user_id}?p={query.page}",
            &["user_id".into()],
            &calls,
        )
        .unwrap();
        assert_eq!(t.dependencies().collect::<Vec<_>>(), ["recentOrders"]);
        let rendered = t
            .render(&|s| match s {
                Source::Result(k, steps) if k == "recentOrders" => {
                    as_text(lookup(&json!([{"id": 7}]), steps)?)
                }
                Source::Capture(c) if c == "user_id" => Some("42".into()),
                Source::Query(q) if q == "page" => Some("2".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(rendered, "/orders/7/by/42?p=2");
        assert!(Template::parse("/{nobody}", &[], &calls).is_err());
        assert!(Template::parse("/{user", &[], &calls).is_err());
        assert_eq!(
            parse_path("a[1][2].b").unwrap(),
            vec![
                Step::Field("a".into()),
                Step::Index(1),
                Step::Index(2),
                Step::Field("b".into())
            ]
        );
    }
}
