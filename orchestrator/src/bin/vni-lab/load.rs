//! The lab file as the commands read it, its problems printed the way
//! every command prints them.

use std::path::Path;

use anyhow::Context;
use vni_lab::lab::{LabFile, Reporter};
use vni_lab::own_kernel::KernelFlags;

use crate::Progress;

/// Reads and validates the lab file `file` with the command line's kernel
/// settings `flags` in the file's place: the lab as it will run, or
/// `None` when it is invalid (its problems printed). `verb` says what
/// could not be done otherwise.
pub fn read_lab(
    file: &Path,
    flags: &KernelFlags,
    progress: &mut Progress,
    verb: &str,
) -> anyhow::Result<Option<LabFile>> {
    match LabFile::read_with(file, flags, &mut |s| progress.step(s)) {
        Ok(lab) => Ok(Some(lab)),
        Err(e) if e.is_invalid() => {
            progress.done();
            eprintln!("{e}");
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot {verb} the lab")),
    }
}

impl Reporter for Progress {
    fn step(&mut self, what: &str) {
        Progress::step(self, what);
    }

    fn note(&mut self, line: &str) {
        Progress::note(self, line);
    }
}
