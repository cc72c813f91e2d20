//! Source positions for a YAML document. serde_yaml's `Value` has no spans, so this module
//! walks saphyr-parser's event stream once and records where every mapping key and every value
//! starts, addressed by its path of keys and sequence indexes. Validation then looks positions
//! up by path, which lets it report every error with a line and column.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Default)]
pub struct Locations {
    keys: HashMap<Vec<Seg>, Pos>,
    values: HashMap<Vec<Seg>, Pos>,
}

enum Frame {
    Map {
        path: Vec<Seg>,
        key: Option<String>,
        expecting_key: bool,
    },
    Seq {
        path: Vec<Seg>,
        next: usize,
    },
}

impl Locations {
    /// Indexes `text`. A document that does not parse yields an empty index; serde reports
    /// the syntax error itself.
    pub fn index(text: &str) -> Locations {
        let mut locations = Locations::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut seen_root = false;
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let pos = Pos {
                line: span.start.line(),
                col: span.start.col() + 1,
            };
            let closes = matches!(event, Event::MappingEnd | Event::SequenceEnd);
            if closes {
                stack.pop();
                value_done(&mut stack);
                continue;
            }
            let opens = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
            if !opens && !matches!(event, Event::Scalar(..) | Event::Alias(_)) {
                continue;
            }
            // Where does this event sit: as a key, or as a value at some path?
            let value_path = match stack.last_mut() {
                None => {
                    if seen_root {
                        break; // only the first document counts
                    }
                    seen_root = true;
                    Some(Vec::new())
                }
                Some(Frame::Map {
                    path,
                    key,
                    expecting_key,
                }) => {
                    if *expecting_key {
                        *expecting_key = false;
                        let name = match &event {
                            Event::Scalar(s, ..) => s.to_string(),
                            _ => "?".to_string(),
                        };
                        let mut key_path = path.clone();
                        key_path.push(Seg::Key(name.clone()));
                        locations.keys.entry(key_path).or_insert(pos);
                        *key = Some(name);
                        if opens {
                            // A complex (mapping or sequence) key: no config uses one, and
                            // serde rejects it anyway; positions after it are not needed.
                            break;
                        }
                        None
                    } else {
                        let mut p = path.clone();
                        p.push(Seg::Key(key.clone().unwrap_or_default()));
                        Some(p)
                    }
                }
                Some(Frame::Seq { path, next }) => {
                    let mut p = path.clone();
                    p.push(Seg::Index(*next));
                    Some(p)
                }
            };
            if let Some(path) = value_path {
                locations.values.entry(path.clone()).or_insert(pos);
                if opens {
                    push_container(&mut stack, &event, path);
                } else {
                    value_done(&mut stack);
                }
            }
        }
        locations
    }

    /// Where the key at `path` is written (the last segment must be a key).
    pub fn key(&self, path: &[Seg]) -> Option<Pos> {
        self.keys.get(path).copied()
    }

    /// Where the value at `path` starts.
    pub fn value(&self, path: &[Seg]) -> Option<Pos> {
        self.values.get(path).copied()
    }
}

fn push_container(stack: &mut Vec<Frame>, event: &Event, path: Vec<Seg>) {
    match event {
        Event::MappingStart(..) => stack.push(Frame::Map {
            path,
            key: None,
            expecting_key: true,
        }),
        _ => stack.push(Frame::Seq { path, next: 0 }),
    }
}

/// A value finished: the enclosing container moves on to its next key or index.
fn value_done(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { expecting_key, .. }) => *expecting_key = true,
        Some(Frame::Seq { next, .. }) => *next += 1,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn finds_nested_keys_and_values() {
        let text = "a: 1\nchildren:\n  web:\n    command: [x, y]\n    stop_timeout: 3s\n";
        let loc = Locations::index(text);
        assert_eq!(loc.key(&[k("a")]), Some(Pos { line: 1, col: 1 }));
        assert_eq!(loc.value(&[k("a")]), Some(Pos { line: 1, col: 4 }));
        let st = [k("children"), k("web"), k("stop_timeout")];
        assert_eq!(loc.key(&st), Some(Pos { line: 5, col: 5 }));
        assert_eq!(loc.value(&st), Some(Pos { line: 5, col: 19 }));
        let y = [k("children"), k("web"), k("command"), Seg::Index(1)];
        assert_eq!(loc.value(&y), Some(Pos { line: 4, col: 18 }));
    }

    #[test]
    fn survives_broken_yaml() {
        let loc = Locations::index("a: [1, 2\nb: {");
        assert!(loc.key(&[k("zzz")]).is_none());
    }
}
