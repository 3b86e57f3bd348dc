//! The served schema as its SDL file writes it: object types with their fields and arguments,
//! scalars, enums and input objects, each with its place in the file. Parsed once, when the
//! config is compiled, by async-graphql's parser; the executable schema (`build`) and the
//! edge limits (`portico_plugins::graphql::limits::Shape`) are both made from this model.

use std::collections::BTreeMap;

use async_graphql::parser::types::{
    BaseType, ConstDirective, InputValueDefinition, OperationType, Type, TypeKind,
    TypeSystemDefinition,
};
use async_graphql::parser::{parse_schema, Pos, Positioned};
use async_graphql::Value as ConstValue;
use portico_plugins::graphql::limits::{FieldShape, Shape};

/// The built-in scalars every schema has.
pub const BUILTIN_SCALARS: [&str; 5] = ["Int", "Float", "String", "Boolean", "ID"];

#[derive(Debug)]
pub struct Model {
    pub query: String,
    pub mutation: Option<String>,
    pub types: BTreeMap<String, TypeDef>,
}

#[derive(Debug)]
pub struct TypeDef {
    pub pos: Pos,
    pub description: Option<String>,
    pub kind: Kind,
}

#[derive(Debug)]
pub enum Kind {
    Object(Vec<FieldDef>),
    Scalar,
    Enum(Vec<String>),
    Input(Vec<ArgDef>),
}

#[derive(Debug)]
pub struct FieldDef {
    pub name: String,
    pub pos: Pos,
    pub description: Option<String>,
    pub ty: Type,
    pub args: Vec<ArgDef>,
    pub deprecated: Option<Option<String>>,
}

#[derive(Debug)]
pub struct ArgDef {
    pub name: String,
    pub ty: Type,
    pub default: Option<ConstValue>,
}

impl Model {
    /// Parse SDL text; `Err` lists every problem as `line:col: message`.
    pub fn parse(sdl: &str) -> Result<Model, Vec<String>> {
        let doc = parse_schema(sdl).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let mut types = BTreeMap::new();
        let mut roots = (None, None);
        for definition in doc.definitions {
            match definition {
                TypeSystemDefinition::Schema(schema) => {
                    let schema = schema.node;
                    if schema.subscription.is_some() {
                        problems.push(at(
                            schema.query.as_ref().map_or(Pos::default(), |q| q.pos),
                            "subscriptions are not served",
                        ));
                    }
                    roots = (
                        schema.query.map(|q| q.node.to_string()),
                        schema.mutation.map(|m| m.node.to_string()),
                    );
                }
                TypeSystemDefinition::Directive(d) => problems.push(at(
                    d.pos,
                    format!(
                        "directive definitions (@{}) are not served",
                        d.node.name.node
                    ),
                )),
                TypeSystemDefinition::Type(def) => {
                    let pos = def.pos;
                    let def = def.node;
                    let name = def.name.node.to_string();
                    if def.extend {
                        problems.push(at(
                            pos,
                            format!("write {name} in one definition, without `extend`"),
                        ));
                        continue;
                    }
                    let kind = match def.kind {
                        TypeKind::Scalar => Kind::Scalar,
                        TypeKind::Object(object) => {
                            if !object.implements.is_empty() {
                                problems.push(at(pos, format!("{name}: interfaces are not served yet; write the fields on the object")));
                            }
                            Kind::Object(
                                object
                                    .fields
                                    .into_iter()
                                    .map(|f| FieldDef {
                                        name: f.node.name.node.to_string(),
                                        pos: f.pos,
                                        description: f.node.description.map(|d| d.node),
                                        deprecated: deprecation(&f.node.directives),
                                        ty: f.node.ty.node,
                                        args: f.node.arguments.into_iter().map(arg).collect(),
                                    })
                                    .collect(),
                            )
                        }
                        TypeKind::Enum(e) => Kind::Enum(
                            e.values
                                .into_iter()
                                .map(|v| v.node.value.node.to_string())
                                .collect(),
                        ),
                        TypeKind::InputObject(input) => {
                            Kind::Input(input.fields.into_iter().map(arg).collect())
                        }
                        TypeKind::Interface(_) | TypeKind::Union(_) => {
                            problems.push(at(
                                pos,
                                format!("{name}: interfaces and unions are not served yet"),
                            ));
                            continue;
                        }
                    };
                    if BUILTIN_SCALARS.contains(&name.as_str()) || name.starts_with("__") {
                        problems.push(at(pos, format!("{name} is a built-in name")));
                        continue;
                    }
                    match types.entry(name) {
                        std::collections::btree_map::Entry::Occupied(e) => {
                            problems.push(at(pos, format!("{} is defined twice", e.key())));
                        }
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(TypeDef {
                                pos,
                                description: def.description.map(|d| d.node),
                                kind,
                            });
                        }
                    }
                }
            }
        }
        let query = roots.0.unwrap_or_else(|| "Query".to_string());
        let mutation = roots.1.or_else(|| {
            types
                .contains_key("Mutation")
                .then(|| "Mutation".to_string())
        });
        let model = Model {
            query,
            mutation,
            types,
        };
        model.check(&mut problems);
        if problems.is_empty() {
            Ok(model)
        } else {
            Err(problems)
        }
    }

    /// Every root is an object type, and every type a field or argument names exists and is
    /// of the right kind (output or input).
    fn check(&self, problems: &mut Vec<String>) {
        for root in std::iter::once(&self.query).chain(&self.mutation) {
            if !matches!(self.types.get(root).map(|t| &t.kind), Some(Kind::Object(_))) {
                problems.push(format!("the schema has no object type {root} for its root"));
            }
        }
        for (name, def) in &self.types {
            match &def.kind {
                Kind::Object(fields) => {
                    if fields.is_empty() {
                        problems.push(at(def.pos, format!("{name} has no fields")));
                    }
                    for field in fields {
                        let named = named_type(&field.ty);
                        if !self.is_output(named) {
                            problems.push(at(field.pos, format!("{name}.{}: {named} is not a type of this schema, or is an input", field.name)));
                        }
                        for a in &field.args {
                            if !self.is_input(named_type(&a.ty)) {
                                problems.push(at(
                                    field.pos,
                                    format!(
                                        "{name}.{}({}): {} is not an input type of this schema",
                                        field.name,
                                        a.name,
                                        named_type(&a.ty)
                                    ),
                                ));
                            }
                        }
                    }
                }
                Kind::Input(fields) => {
                    for a in fields {
                        if !self.is_input(named_type(&a.ty)) {
                            problems.push(at(
                                def.pos,
                                format!(
                                    "{name}.{}: {} is not an input type of this schema",
                                    a.name,
                                    named_type(&a.ty)
                                ),
                            ));
                        }
                    }
                }
                Kind::Scalar | Kind::Enum(_) => {}
            }
        }
    }

    fn is_output(&self, name: &str) -> bool {
        BUILTIN_SCALARS.contains(&name)
            || matches!(
                self.types.get(name).map(|t| &t.kind),
                Some(Kind::Object(_) | Kind::Scalar | Kind::Enum(_))
            )
    }

    fn is_input(&self, name: &str) -> bool {
        BUILTIN_SCALARS.contains(&name)
            || matches!(
                self.types.get(name).map(|t| &t.kind),
                Some(Kind::Input(_) | Kind::Scalar | Kind::Enum(_))
            )
    }

    /// The fields of object type `name`.
    pub fn fields(&self, name: &str) -> Option<&[FieldDef]> {
        match &self.types.get(name)?.kind {
            Kind::Object(fields) => Some(fields),
            _ => None,
        }
    }

    pub fn field(&self, type_name: &str, field: &str) -> Option<&FieldDef> {
        self.fields(type_name)?.iter().find(|f| f.name == field)
    }

    pub fn is_object(&self, name: &str) -> bool {
        self.fields(name).is_some()
    }
}

impl Shape for Model {
    fn root(&self, op: OperationType) -> Option<&str> {
        match op {
            OperationType::Query => Some(&self.query),
            OperationType::Mutation => self.mutation.as_deref(),
            OperationType::Subscription => None,
        }
    }

    fn field(&self, parent_type: &str, field: &str) -> Option<FieldShape<'_>> {
        let def = Model::field(self, parent_type, field)?;
        Some(FieldShape {
            type_name: named_type(&def.ty),
            list: is_list(&def.ty),
        })
    }
}

/// The named type at the bottom of list and non-null wrappers.
pub fn named_type(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(name) => name.as_str(),
        BaseType::List(inner) => named_type(inner),
    }
}

pub fn is_list(ty: &Type) -> bool {
    matches!(ty.base, BaseType::List(_))
}

fn arg(a: Positioned<InputValueDefinition>) -> ArgDef {
    ArgDef {
        name: a.node.name.node.to_string(),
        ty: a.node.ty.node,
        default: a.node.default_value.map(|d| d.node),
    }
}

/// `@deprecated(reason: "...")` on a field: kept, so introspection tells clients.
fn deprecation(directives: &[Positioned<ConstDirective>]) -> Option<Option<String>> {
    let d = directives
        .iter()
        .find(|d| d.node.name.node.as_str() == "deprecated")?;
    Some(d.node.get_argument("reason").and_then(|r| match &r.node {
        ConstValue::String(s) => Some(s.clone()),
        _ => None,
    }))
}

fn at(pos: Pos, message: impl std::fmt::Display) -> String {
    format!("{}:{}: {message}", pos.line, pos.column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_is_read_with_its_roots_fields_and_arguments() {
        let model = Model::parse(
            "type Query { user(id: ID!): User }\n\
             type User { id: ID! name: String orders(first: Int = 10): [Order!]! }\n\
             type Order { id: ID! status: Status }\n\
             enum Status { OPEN SHIPPED }",
        )
        .unwrap();
        assert_eq!(model.query, "Query");
        assert!(model.mutation.is_none());
        let orders = model.field("User", "orders").unwrap();
        assert_eq!(named_type(&orders.ty), "Order");
        assert!(is_list(&orders.ty));
        assert_eq!(orders.args[0].name, "first");
        let shape = Shape::field(&model, "User", "orders").unwrap();
        assert!(shape.list);
    }

    #[test]
    fn mistakes_in_the_sdl_are_named_with_their_place() {
        let problems =
            Model::parse("type Query { user: Usr }\ntype Query { again: Int }\nunion U = Query")
                .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("1:14:") && p.contains("Usr")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("defined twice")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("unions")),
            "{problems:?}"
        );
        assert!(Model::parse("type Query {").is_err());
        assert!(Model::parse("type Other { a: Int }").unwrap_err()[0].contains("root"));
    }
}
