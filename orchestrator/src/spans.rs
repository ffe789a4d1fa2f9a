//! Where each value of a YAML document is: a map from paths like
//! `nodes[1].ip` to line and column, so that errors found after parsing
//! (a duplicate address, a region too small) still point into the file.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A position in the file, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

/// Positions of every key and value of a document, by path.
#[derive(Debug, Default)]
pub struct Spans {
    map: HashMap<String, Pos>,
}

impl Spans {
    /// Positions in `source`; an unparsable document has none (the YAML
    /// parser that reads the values reports its own error).
    pub fn of(source: &str) -> Self {
        let mut builder = Builder::default();
        let _ = Parser::new_from_str(source).load(&mut builder, false);
        Spans { map: builder.map }
    }

    /// Position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut path = path;
        loop {
            if let Some(pos) = self.map.get(path) {
                return Some(*pos);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// One open container while walking the events.
#[derive(Debug)]
enum Frame {
    /// A mapping; `key` holds the key whose value comes next.
    Map { path: String, key: Option<String> },
    /// A sequence and the index of its next item.
    Seq { path: String, next: usize },
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    map: HashMap<String, Pos>,
}

impl Builder {
    /// The path of the value that starts now, advancing the parent.
    fn next_value_path(&mut self) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Map { path, key } => {
                let key = key.take()?;
                Some(if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                })
            }
            Frame::Seq { path, next } => {
                *next += 1;
                Some(format!("{path}[{}]", *next - 1))
            }
        }
    }

    /// True when the next scalar in the innermost mapping is a key.
    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match event {
            Event::Scalar(value, ..) if self.expecting_key() => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    let full = if path.is_empty() {
                        value.clone()
                    } else {
                        format!("{path}.{value}")
                    };
                    self.map.entry(full).or_insert(pos);
                    *key = Some(value);
                }
            }
            Event::Scalar(..) | Event::Alias(_) => {
                if let Some(path) = self.next_value_path() {
                    // The key's position is the better pointer for a
                    // scalar under a key; items of a list get their own.
                    self.map.entry(path).or_insert(pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.next_value_path().unwrap_or_default();
                self.map.entry(path.clone()).or_insert(pos);
                self.stack
                    .push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_point_at_their_lines() {
        let src = "name: lab\nnodes:\n  - name: a\n    ip: 10.0.0.1/24\n  - name: b\n    ip: 10.0.0.2/24\nvni:\n  mtu: 9000\n";
        let spans = Spans::of(src);
        assert_eq!(spans.find("name"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(spans.find("nodes[0].name").map(|p| p.line), Some(3));
        assert_eq!(spans.find("nodes[1].ip"), Some(Pos { line: 6, col: 5 }));
        assert_eq!(spans.find("vni.mtu").map(|p| p.line), Some(8));
        // A path with no entry of its own falls back to its parent.
        assert_eq!(spans.find("nodes[1].mac").map(|p| p.line), Some(5));
        assert_eq!(spans.find("nowhere"), None);
    }

    #[test]
    fn flow_style_and_bad_yaml_do_not_panic() {
        let spans = Spans::of("nodes: [{name: a, ip: 1.2.3.4/8}, {name: b}]\n");
        assert_eq!(spans.find("nodes[1].name").map(|p| p.line), Some(1));
        let _ = Spans::of("nodes: [\n  - :\n{{{");
    }
}
