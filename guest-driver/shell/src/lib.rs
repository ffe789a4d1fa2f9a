//! The stream between `vni-lab shell` on the host and `vni-shell serve`
//! in a guest, over one of the node's virtio-serial ports named
//! [`PORT_PREFIX`]N: the terminal's bytes both ways, with a few control
//! messages, each starting with [`ESC`] (a literal 0xFF byte is sent
//! twice).
//!
//! | bytes | from | meaning |
//! |---|---|---|
//! | `ESC 'P'` | host | are you there? (answered with `Ready` when idle) |
//! | `ESC 'R'` | guest | idle: a session may start |
//! | `ESC 'S' rows cols len TERM` | host | start a shell: window size (u16 big-endian each), `$TERM` (`len` bytes, at most [`MAX_TERM`]) |
//! | `ESC 'W' rows cols` | host | the window's new size |
//! | `ESC 'H'` | host | hang up: end the session (the user left) |
//! | `ESC 'X' code` | guest | the shell exited with `code` (i32 big-endian; 128+N for signal N) |
//!
//! Both ends decode what the other wrote as untrusted: unknown messages
//! are skipped, and a message is never longer than [`MAX_MESSAGE`].

/// Starts a control message; twice, a literal 0xFF.
pub const ESC: u8 = 0xFF;
/// The ports' names: `org.vni-lab.shell.0` and so on.
pub const PORT_PREFIX: &str = "org.vni-lab.shell.";
/// Shell ports per node: this many shells at once.
pub const PORTS: usize = 4;
/// The longest `$TERM` passed on.
pub const MAX_TERM: usize = 64;
/// The longest control message, in bytes.
pub const MAX_MESSAGE: usize = 2 + 5 + MAX_TERM;

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Host: are you there?
    Ping,
    /// Guest: idle, a session may start.
    Ready,
    /// Host: start a shell.
    Start {
        /// Window rows.
        rows: u16,
        /// Window columns.
        cols: u16,
        /// The host terminal's `$TERM`.
        term: String,
    },
    /// Host: the window's new size.
    Resize {
        /// Window rows.
        rows: u16,
        /// Window columns.
        cols: u16,
    },
    /// Host: end the session.
    Hangup,
    /// Guest: the shell exited.
    Exited {
        /// Its status (128+N for signal N).
        code: i32,
    },
}

/// Appends `data` to `out`, escaped.
pub fn encode_data(data: &[u8], out: &mut Vec<u8>) {
    for &b in data {
        out.push(b);
        if b == ESC {
            out.push(ESC);
        }
    }
}

/// Appends `control` to `out`.
pub fn encode(control: &Control, out: &mut Vec<u8>) {
    out.push(ESC);
    match control {
        Control::Ping => out.push(b'P'),
        Control::Ready => out.push(b'R'),
        Control::Start { rows, cols, term } => {
            out.push(b'S');
            out.extend_from_slice(&rows.to_be_bytes());
            out.extend_from_slice(&cols.to_be_bytes());
            let term: Vec<u8> = term
                .bytes()
                .filter(|b| b.is_ascii_graphic())
                .take(MAX_TERM)
                .collect();
            // At most MAX_TERM (64) bytes: fits.
            out.push(term.len() as u8);
            out.extend_from_slice(&term);
        }
        Control::Resize { rows, cols } => {
            out.push(b'W');
            out.extend_from_slice(&rows.to_be_bytes());
            out.extend_from_slice(&cols.to_be_bytes());
        }
        Control::Hangup => out.push(b'H'),
        Control::Exited { code } => {
            out.push(b'X');
            out.extend_from_slice(&code.to_be_bytes());
        }
    }
}

/// Writes `control` to `out` in one write.
pub fn send(out: &mut impl std::io::Write, control: &Control) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    encode(control, &mut bytes);
    out.write_all(&bytes)
}

/// Splits a stream into terminal bytes and control messages, across reads.
#[derive(Debug, Default)]
pub struct Decoder {
    /// An unfinished control message (starting with ESC).
    partial: Vec<u8>,
}

/// What a complete message in `m` (starting with ESC) is: `Some(Ok)` a
/// message, `Some(Err(n))` `n` bytes to skip (unknown), `None` more bytes
/// needed.
fn parse(m: &[u8]) -> Option<Result<(Option<Control>, usize), usize>> {
    let kind = *m.get(1)?;
    let u16_at =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?])) };
    Some(Ok(match kind {
        b'P' => (Some(Control::Ping), 2),
        b'R' => (Some(Control::Ready), 2),
        b'H' => (Some(Control::Hangup), 2),
        b'W' => (
            Some(Control::Resize {
                rows: u16_at(2)?,
                cols: u16_at(4)?,
            }),
            6,
        ),
        b'X' => {
            let code = i32::from_be_bytes([*m.get(2)?, *m.get(3)?, *m.get(4)?, *m.get(5)?]);
            (Some(Control::Exited { code }), 6)
        }
        b'S' => {
            let (rows, cols) = (u16_at(2)?, u16_at(4)?);
            let len = usize::from(*m.get(6)?);
            if len > MAX_TERM {
                return Some(Err(7));
            }
            let term = m.get(7..7 + len)?;
            let term = String::from_utf8_lossy(term).into_owned();
            (Some(Control::Start { rows, cols, term }), 7 + len)
        }
        _ => return Some(Err(2)),
    }))
}

impl Decoder {
    /// Decodes `bytes`: terminal bytes are appended to `data`, control
    /// messages to `controls`; an unfinished message waits for the next
    /// call.
    pub fn feed(&mut self, bytes: &[u8], data: &mut Vec<u8>, controls: &mut Vec<Control>) {
        let mut i = 0;
        while i < bytes.len() {
            if self.partial.is_empty() {
                // Terminal bytes up to the next ESC, in one go.
                let run = bytes[i..]
                    .iter()
                    .position(|&b| b == ESC)
                    .unwrap_or(bytes.len() - i);
                data.extend_from_slice(&bytes[i..i + run]);
                i += run;
                if i == bytes.len() {
                    break;
                }
            }
            self.partial.push(bytes[i]);
            i += 1;
            if self.partial.len() == 2 && self.partial[1] == ESC {
                data.push(ESC);
                self.partial.clear();
                continue;
            }
            match parse(&self.partial) {
                None if self.partial.len() < MAX_MESSAGE => {}
                None => self.partial.clear(),
                Some(Err(_)) => self.partial.clear(),
                Some(Ok((control, _))) => {
                    controls.extend(control);
                    self.partial.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Control> {
        vec![
            Control::Ping,
            Control::Ready,
            Control::Start {
                rows: 40,
                cols: 120,
                term: "xterm-256color".into(),
            },
            Control::Resize {
                rows: 0xff,
                cols: 0xffff,
            },
            Control::Hangup,
            Control::Exited { code: -1 },
        ]
    }

    #[test]
    fn data_and_messages_come_back_whatever_the_reads() {
        let mut stream = Vec::new();
        let data: Vec<u8> = (0..=255u8).chain([ESC, ESC, b'x']).collect();
        encode_data(&data, &mut stream);
        for control in all() {
            encode(&control, &mut stream);
            encode_data(b"between", &mut stream);
        }
        let mut want = data.clone();
        for _ in all() {
            want.extend_from_slice(b"between");
        }
        for chunk in 1..stream.len() {
            let (mut decoder, mut got, mut controls) = (Decoder::default(), Vec::new(), Vec::new());
            for piece in stream.chunks(chunk) {
                decoder.feed(piece, &mut got, &mut controls);
            }
            assert_eq!(got, want, "reads of {chunk}");
            assert_eq!(controls, all(), "reads of {chunk}");
        }
    }

    #[test]
    fn garbage_is_skipped_and_a_term_is_bounded() {
        let (mut decoder, mut data, mut controls) = (Decoder::default(), Vec::new(), Vec::new());
        decoder.feed(
            &[ESC, b'?', b'a', ESC, b'S', 0, 1, 0, 1, 200, b'b'],
            &mut data,
            &mut controls,
        );
        assert!(controls.is_empty());
        assert_eq!(data, b"ab");
        let mut out = Vec::new();
        encode(
            &Control::Start {
                rows: 1,
                cols: 1,
                term: "x".repeat(300) + "\n\0",
            },
            &mut out,
        );
        assert_eq!(out.len(), 7 + MAX_TERM);
        decoder.feed(&out, &mut data, &mut controls);
        assert!(matches!(&controls[..], [Control::Start { term, .. }] if term.len() == MAX_TERM));
    }
}
