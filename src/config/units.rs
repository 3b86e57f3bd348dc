//! Durations and sizes as the config spells them; shared with the plugins, which parse
//! their own durations with the same rules.

pub use portico_plugins::units::*;
