//! What can go wrong for an endpoint: errors that stop it, and reasons a
//! frame was not taken.

use core::fmt;

use super::super::addr::AddrError;
use super::super::layout::LayoutError;
use super::super::lock::LockError;
use super::super::nodes::NodeId;

/// Errors that stop an endpoint (as opposed to a dropped frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointError {
    /// The region's header is missing or invalid.
    Layout(LayoutError),
    /// The region lock failed.
    Lock(LockError),
    /// Address registration failed.
    Addr(AddrError),
    /// The node id does not fit the region.
    BadNode {
        /// The id asked for.
        node: NodeId,
        /// Nodes the region holds.
        max_nodes: usize,
    },
    /// Another live process is attached as this node.
    NodeBusy(NodeId),
    /// The region was formatted again under this node.
    Reformatted,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::Layout(_) => write!(f, "Cannot use the shared region"),
            EndpointError::Lock(_) => write!(f, "Region lock failed"),
            EndpointError::Addr(_) => write!(f, "Cannot register this node's address"),
            EndpointError::BadNode { node, max_nodes } => write!(
                f,
                "Node id {node} is out of range: this region holds nodes 0 to {}",
                max_nodes.saturating_sub(1)
            ),
            EndpointError::NodeBusy(node) => write!(
                f,
                "Node {node} is attached by another live process (its heartbeat is moving)"
            ),
            EndpointError::Reformatted => write!(f, "The region was formatted again; attach again"),
        }
    }
}

impl core::error::Error for EndpointError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            EndpointError::Layout(e) => Some(e),
            EndpointError::Lock(e) => Some(e),
            EndpointError::Addr(e) => Some(e),
            _ => None,
        }
    }
}

impl From<LayoutError> for EndpointError {
    fn from(e: LayoutError) -> Self {
        EndpointError::Layout(e)
    }
}

impl From<LockError> for EndpointError {
    fn from(e: LockError) -> Self {
        EndpointError::Lock(e)
    }
}

impl From<AddrError> for EndpointError {
    fn from(e: AddrError) -> Self {
        EndpointError::Addr(e)
    }
}

/// The frame source of [`super::Endpoint::send`], which cannot fail: a
/// frame given as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSource {}

impl fmt::Display for NoSource {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl core::error::Error for NoSource {}

/// Why a frame was not taken. Every one is counted in `tx_dropped` except
/// `Endpoint`, which means the endpoint itself can no longer work, and
/// `Source`, the error of the frame's source in
/// [`super::Endpoint::send_direct`] (`S`).
#[derive(Debug)]
pub enum SendError<S = NoSource> {
    /// Empty, or larger than the largest frame.
    BadLength(usize),
    /// The destination is not a running peer.
    NoPeer(NodeId),
    /// No free slot in the pool.
    NoBuffer,
    /// The destination's queue or ring is full.
    QueueFull,
    /// The endpoint failed.
    Endpoint(EndpointError),
    /// The frame's source failed; nothing was sent.
    Source(S),
}

impl<S> SendError<S> {
    /// True when retrying later may succeed (the receiver is slow).
    pub fn is_backpressure(&self) -> bool {
        matches!(self, SendError::NoBuffer | SendError::QueueFull)
    }
}

impl SendError<NoSource> {
    /// The same error as one of a sender with a fallible source.
    pub fn widen<E>(self) -> SendError<E> {
        match self {
            SendError::BadLength(len) => SendError::BadLength(len),
            SendError::NoPeer(node) => SendError::NoPeer(node),
            SendError::NoBuffer => SendError::NoBuffer,
            SendError::QueueFull => SendError::QueueFull,
            SendError::Endpoint(e) => SendError::Endpoint(e),
            SendError::Source(never) => match never {},
        }
    }
}

impl<S: fmt::Display> fmt::Display for SendError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::BadLength(len) => {
                write!(f, "Frame of {len} bytes is outside 1..=65600")
            }
            SendError::NoPeer(node) => write!(f, "Node {node} is not a running peer"),
            SendError::NoBuffer => write!(f, "No free buffer for the frame"),
            SendError::QueueFull => write!(f, "Destination queue is full"),
            SendError::Endpoint(e) => fmt::Display::fmt(e, f),
            SendError::Source(_) => write!(f, "Reading the frame failed"),
        }
    }
}

impl<S: core::error::Error + 'static> core::error::Error for SendError<S> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            // Transparent: the endpoint's error says what it is.
            SendError::Endpoint(e) => e.source(),
            SendError::Source(s) => Some(s),
            _ => None,
        }
    }
}

impl<S> From<EndpointError> for SendError<S> {
    fn from(e: EndpointError) -> Self {
        SendError::Endpoint(e)
    }
}
