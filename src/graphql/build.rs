//! The executable schema: async-graphql's dynamic schema, made from the SDL model with one
//! resolver per field (`execute::resolve`), each given its compiled plan. Built once per
//! config; queries only execute it.

use std::sync::Arc;

use async_graphql::dynamic::{
    Enum, Field, InputObject, InputValue, Object, Scalar as DynScalar, Schema, TypeRef,
};
use async_graphql::parser::types::{BaseType, Type};

use super::execute::{self, FieldPlan, Out, Scalar};
use super::plan::{Plans, Resolver};
use super::sdl::{Kind, Model};

/// The schema of `model`, resolved by `plans`, validating queries with `validation`.
pub fn schema(
    model: &Model,
    plans: &Plans,
    introspection: bool,
    validation: async_graphql::ValidationMode,
) -> Result<Schema, String> {
    let mut builder =
        Schema::build(&model.query, model.mutation.as_deref(), None).validation_mode(validation);
    let mut next_id = 0;
    for (name, def) in &model.types {
        builder = match &def.kind {
            Kind::Object(fields) => {
                let mut object = Object::new(name);
                if let Some(d) = &def.description {
                    object = object.description(d);
                }
                for f in fields {
                    let resolver = plans
                        .resolvers
                        .get(&(name.clone(), f.name.clone()))
                        .cloned();
                    let siblings = match resolver.as_deref() {
                        Some(Resolver::Call { after, .. }) => after
                            .iter()
                            .filter_map(|s| {
                                let theirs = plans.resolvers.get(&(name.clone(), s.to_string()))?;
                                Some((Arc::clone(s), Arc::clone(theirs)))
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    let plan = Arc::new(FieldPlan {
                        id: next_id,
                        name: f.name.as_str().into(),
                        out: out(&f.ty, model),
                        resolver,
                        siblings,
                    });
                    next_id += 1;
                    let mut field = Field::new(&f.name, type_ref(&f.ty), move |ctx| {
                        execute::resolve(ctx, Arc::clone(&plan))
                    });
                    for a in &f.args {
                        let mut input = InputValue::new(&a.name, type_ref(&a.ty));
                        if let Some(default) = &a.default {
                            input = input.default_value(default.clone());
                        }
                        field = field.argument(input);
                    }
                    if let Some(d) = &f.description {
                        field = field.description(d);
                    }
                    if let Some(reason) = &f.deprecated {
                        field = field.deprecation(reason.as_deref());
                    }
                    object = object.field(field);
                }
                builder.register(object)
            }
            Kind::Scalar => builder.register(DynScalar::new(name)),
            Kind::Enum(values) => {
                builder.register(Enum::new(name).items(values.iter().map(String::as_str)))
            }
            Kind::Input(fields) => {
                let mut input = InputObject::new(name);
                for a in fields {
                    let mut value = InputValue::new(&a.name, type_ref(&a.ty));
                    if let Some(default) = &a.default {
                        value = value.default_value(default.clone());
                    }
                    input = input.field(value);
                }
                builder.register(input)
            }
        };
    }
    if !introspection {
        builder = builder.disable_introspection();
    }
    builder.finish().map_err(|e| e.to_string())
}

fn type_ref(ty: &Type) -> TypeRef {
    let inner = match &ty.base {
        BaseType::Named(name) => TypeRef::Named(name.to_string().into()),
        BaseType::List(item) => TypeRef::List(Box::new(type_ref(item))),
    };
    if ty.nullable {
        inner
    } else {
        TypeRef::NonNull(Box::new(inner))
    }
}

fn out(ty: &Type, model: &Model) -> Out {
    let inner = match &ty.base {
        BaseType::List(item) => Out::List(Box::new(out(item, model))),
        BaseType::Named(name) => match name.as_str() {
            "Int" => Out::Scalar(Scalar::Int),
            "Float" => Out::Scalar(Scalar::Float),
            "String" => Out::Scalar(Scalar::String),
            "Boolean" => Out::Scalar(Scalar::Boolean),
            "ID" => Out::Scalar(Scalar::Id),
            other => match model.types.get(other).map(|t| &t.kind) {
                Some(Kind::Object(_)) => Out::Object,
                Some(Kind::Enum(_)) => Out::Enum,
                _ => Out::Scalar(Scalar::Custom),
            },
        },
    };
    if ty.nullable {
        inner
    } else {
        Out::NonNull(Box::new(inner))
    }
}
