//! A lab file as the commands read it: its text and the validated lab it
//! describes, with the command line's kernel settings
//! ([`KernelFlags`]) written into the file's `guest:` section first, so
//! that what boots is exactly what was validated.

use std::path::{Path, PathBuf};

use crate::own_kernel::{KernelFlags, OwnKernelError};
use crate::topology::{Problem, Topology, TopologyError};

/// Why a lab file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LabFileError {
    /// The file cannot be read, or it has problems (each listed with its
    /// line and field).
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The file is valid, but not with the command line's kernel settings
    /// in it.
    #[error("{}", with_flags(.path, .problems))]
    InvalidWithFlags {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// The command line's kernel settings cannot be used.
    #[error("Cannot use the command line's kernel settings")]
    Kernel(#[from] OwnKernelError),
}

fn with_flags(path: &Path, problems: &[Problem]) -> String {
    // (Where in the file is moot: the text is the file rewritten.)
    let mut text = format!(
        "{} with the command line's kernel settings:",
        path.display()
    );
    for problem in problems {
        text.push_str(&format!("\n  {}: {}", problem.field, problem.message));
    }
    text
}

impl LabFileError {
    /// The lab as written cannot run (the user's input is wrong), as
    /// opposed to vni-lab failing to read or resolve it.
    pub fn is_invalid(&self) -> bool {
        matches!(
            self,
            LabFileError::Topology(TopologyError::Invalid { .. })
                | LabFileError::InvalidWithFlags { .. }
        )
    }
}

/// A validated lab file.
#[derive(Clone, Debug)]
pub struct LabFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text as it runs (with the command line's kernel settings).
    pub text: String,
    /// What it describes.
    pub topology: Topology,
}

impl LabFile {
    /// Reads and validates `path`.
    pub fn read(path: &Path) -> Result<LabFile, LabFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let topology = Topology::parse(&text, path)?;
        Ok(LabFile {
            path: path.to_owned(),
            text,
            topology,
        })
    }

    /// Reads `path` and puts `flags` in the file's place (a kernel tree's
    /// modules installed into the image cache on the way, with `step`
    /// saying so): the lab as it will run.
    pub fn read_with(
        path: &Path,
        flags: &KernelFlags,
        step: &mut dyn FnMut(&str),
    ) -> Result<LabFile, LabFileError> {
        let file = LabFile::read(path)?;
        if !flags.any() {
            return Ok(file);
        }
        let resolved = flags.resolve(&crate::image::cache_dir(), step)?;
        let text = resolved.apply(&file.text)?;
        match Topology::parse(&text, path) {
            Ok(topology) => Ok(LabFile {
                path: path.to_owned(),
                text,
                topology,
            }),
            Err(TopologyError::Invalid { problems, .. }) => Err(LabFileError::InvalidWithFlags {
                path: path.to_owned(),
                problems,
            }),
            Err(e) => Err(e.into()),
        }
    }
}
