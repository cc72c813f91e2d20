//! Configuration: bytes in, a validated [`TreeSpec`] or every located error out. This layer
//! knows nothing of processes, clocks or tokio.

mod error;
mod locate;
pub mod schema;
mod validate;

use std::path::Path;

pub use error::LoadError;
pub use schema::*;

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<TreeSpec, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Validates configuration text; `source` names it in errors.
pub fn parse(text: &str, source: &Path) -> Result<TreeSpec, LoadError> {
    validate::parse(text, source).map_err(LoadError::Invalid)
}
