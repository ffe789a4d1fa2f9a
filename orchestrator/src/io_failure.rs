//! An I/O error with what was being done: the one shape that every
//! component's error enum wraps as its `Io` variant, and the `map_err`
//! closure that makes it.

use std::io;

/// What could not be done, and what the OS said.
#[derive(Debug, thiserror::Error)]
#[error("Cannot {what}")]
pub struct IoFailure {
    /// What was being done (`write /run/x`).
    pub what: String,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

impl IoFailure {
    /// `what` failed with `source`.
    pub fn new(what: String, source: io::Error) -> Self {
        IoFailure { what, source }
    }
}

/// For `map_err`: an I/O error as an [`IoFailure`] saying that `what`
/// failed, which `?` turns into the component's `Io` variant.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> IoFailure {
    let what = what.into();
    move |source| IoFailure { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Component {
        #[error("Component")]
        Io(#[from] IoFailure),
    }

    #[test]
    fn says_what_failed_and_keeps_the_reason() {
        let e = Component::from(io_err("write /x")(io::Error::from(io::ErrorKind::NotFound)));
        let Component::Io(failure) = &e;
        assert_eq!(failure.to_string(), "Cannot write /x");
        assert_eq!(
            std::error::Error::source(failure).map(ToString::to_string),
            Some(io::Error::from(io::ErrorKind::NotFound).to_string())
        );
    }
}
