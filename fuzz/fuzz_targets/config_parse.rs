//! Configuration text → `config::parse` (YAML, validation, located errors), and for a valid
//! tree what `arborist check --plan` does with it (plan and rendering). Arbitrary bytes are
//! decoded lossily: `config::load` refuses invalid UTF-8 before `parse`, so the parser itself
//! only ever sees a `&str`.
#![no_main]

use std::path::Path;

use arborist::config::{self, LoadError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
});

fn check(text: &str) {
    match config::parse(text, Path::new("fuzz.yaml")) {
        Ok(tree) => {
            let _ = arborist::check::render_tree(&tree);
            let (_, total) = arborist::check::render_plan(&tree);
            assert!(
                total <= tree.root.shutdown_timeout,
                "worst case {total:?} beyond the root deadline {:?}",
                tree.root.shutdown_timeout
            );
        }
        Err(LoadError::Invalid(errors)) => {
            assert!(!errors.is_empty(), "an invalid config with no error");
            // Positions are 1-based and inside the text (one line past the end at most:
            // an error "at the end of the stream").
            let lines = text.split(['\n', '\r']).count() + 1;
            for e in &errors {
                if let Some(p) = e.pos {
                    assert!(p.line >= 1 && p.col >= 1, "position {p:?} of {e}");
                    assert!(p.line <= lines, "line {} of {lines}: {e}", p.line);
                }
            }
            let _ = LoadError::Invalid(errors).to_string();
        }
        Err(other) => panic!("parse may only return Invalid, got {other}"),
    }
}
