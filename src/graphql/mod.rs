//! The GraphQL gateway: a schema Portico serves itself (`[graphql.NAME]`, a route with
//! `graphql = "NAME"`), its fields resolved by calls to REST services through the upstream
//! exchange, like every other call Portico makes (balancing, breakers, retries, deadlines,
//! metrics, traces).
//!
//! - `sdl`: the schema file, parsed once, with each type's place in the file.
//! - `plan`: the `resolvers`, checked against the schema and compiled (templates, batches,
//!   siblings waited for).
//! - `build`: async-graphql's dynamic schema made from both.
//! - `execute`: what each field does while a query runs.
//!
//! Reading the request, the edge limits and persisted queries are `portico_plugins::graphql`'s,
//! shared with the `graphql_guard` plugin; answering a route is `proxy::graphql`.

pub mod build;
pub mod documents;
pub mod execute;
pub mod plan;
pub mod sdl;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use portico_plugins::graphql::{Limits, OperationNames, PersistedQueries};

use crate::config::GraphqlSection;
use crate::upstream::live::Upstream;

/// One `[graphql.NAME]`, compiled: ready to execute queries.
pub struct GraphqlSchema {
    /// Its `[graphql.NAME]`.
    pub name: Arc<str>,
    /// The schema, validating each query in full.
    pub schema: async_graphql::dynamic::Schema,
    /// The same schema with async-graphql's fast validation, for the texts in `documents`,
    /// which passed the full one before.
    pub fast: async_graphql::dynamic::Schema,
    pub documents: documents::Documents,
    /// What the edge limits read: which fields are lists, and of what.
    pub model: sdl::Model,
    pub limits: Limits,
    pub persisted: Option<PersistedQueries>,
    /// The path captures its templates read: every route serving it must have them.
    pub captures: Vec<String>,
    /// Operation names seen, for `portico_graphql_operations_total{operation}` to stay
    /// bounded.
    pub operations: OperationNames,
}

impl GraphqlSchema {
    /// Compile one schema; errors are (key under `graphql.NAME`, message).
    pub fn compile(
        name: &str,
        section: &GraphqlSection,
        config_dir: &Path,
        pools: &BTreeMap<String, Arc<Upstream>>,
    ) -> Result<GraphqlSchema, Vec<(String, String)>> {
        let file = config_dir.join(&section.schema);
        let sdl = std::fs::read_to_string(&file).map_err(|e| {
            vec![(
                "schema".to_string(),
                format!("cannot read {}: {e}", file.display()),
            )]
        })?;
        let model = sdl::Model::parse(&sdl).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| ("schema".to_string(), format!("{}:{p}", section.schema)))
                .collect::<Vec<_>>()
        })?;
        let mut errors = Vec::new();
        let persisted = match &section.persisted_queries {
            None => None,
            Some(path) => match PersistedQueries::load(&config_dir.join(path)) {
                Ok(list) => Some(list),
                Err(e) => {
                    errors.push(("persisted_queries".to_string(), e.to_string()));
                    None
                }
            },
        };
        let limits = Limits {
            max_depth: section.max_depth,
            max_complexity: section.max_complexity,
            max_aliases: section.max_aliases,
            max_query_size: usize::try_from(section.max_query_size.0).unwrap_or(usize::MAX),
            introspection: section.introspection,
        };
        let plans = match plan::compile(&section.resolvers, &model, pools) {
            Ok(plans) => Some(plans),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        };
        let (Some(plans), true) = (plans, errors.is_empty()) else {
            return Err(errors);
        };
        let build = |mode| {
            build::schema(&model, &plans, section.introspection, mode)
                .map_err(|e| vec![("schema".to_string(), format!("{}: {e}", section.schema))])
        };
        let schema = build(async_graphql::ValidationMode::Strict)?;
        let fast = build(async_graphql::ValidationMode::Fast)?;
        Ok(GraphqlSchema {
            name: name.into(),
            schema,
            fast,
            documents: documents::Documents::default(),
            model,
            limits,
            persisted,
            captures: plans.captures,
            operations: OperationNames::default(),
        })
    }
}
