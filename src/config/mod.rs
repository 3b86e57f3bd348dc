//! The config file: its model, how it is read, and how its problems are reported.

pub mod env;
pub mod error;
pub mod file;
pub mod load;
pub mod redis;
pub mod source_map;
pub mod units;

pub use error::{ConfigError, ConfigErrors, Problems};
pub use file::*;
pub use load::{parse_str, read_file, BuildContext, ParsedConfig, Reuse};
pub use units::{ByteSize, ConfigDuration};
