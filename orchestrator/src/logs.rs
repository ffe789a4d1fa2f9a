//! The ends of the logs vni-lab keeps and shows in its errors: consoles,
//! QEMU and supervisor logs, kernel builds' output.

use std::path::Path;

/// The last `lines` lines of `text`.
pub fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of the log file at `path` (empty when it cannot
/// be read; invalid UTF-8 replaced).
pub fn tail(path: &Path, lines: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    last_lines(&String::from_utf8_lossy(&bytes), lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_or_all_of_a_short_text() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb", 5), "a\nb");
        assert_eq!(last_lines("", 3), "");
        assert_eq!(tail(Path::new("/nonexistent/vni-lab.log"), 3), "");
    }
}
