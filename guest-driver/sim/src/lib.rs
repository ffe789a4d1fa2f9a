//! Host-only harnesses for the VNI protocol, kept out of the protocol
//! library itself (which then needs neither anyhow nor clap):
//!
//! - [`hostile`]: a rogue node that writes garbage into the region, and the
//!   hostile-region drivers the property tests and fuzz targets use;
//! - [`processes`] (re-exported here): nodes as host processes sharing one
//!   region file, for the stress, crash and bench runs of `vni-sim`.

pub mod hostile;
pub mod processes;

pub use processes::*;
