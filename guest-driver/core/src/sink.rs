//! Working storage the caller provides: the core allocates nothing.
//!
//! A [`Sink`] is where the core appends what it collects (slots popped
//! from the free stack, the segments of received frames). User space
//! passes a `Vec` (feature `std`); the kernel passes a [`SliceVec`] over
//! memory it allocated once, when the device was probed.

/// An append-only list the core writes into.
pub trait Sink<T> {
    /// Appends `value`; false (and nothing appended) when there is no room.
    fn push(&mut self, value: T) -> bool;
    /// Items held.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drops every item from index `len` on.
    fn truncate(&mut self, len: usize);
    /// Room for this many more items.
    fn room(&self) -> usize;
    /// The items held.
    fn as_slice(&self) -> &[T];
}

/// A list of at most `buf.len()` items kept in a caller's slice.
#[derive(Debug)]
pub struct SliceVec<'a, T> {
    buf: &'a mut [T],
    len: usize,
}

impl<'a, T: Copy> SliceVec<'a, T> {
    /// An empty list over `buf`.
    pub fn new(buf: &'a mut [T]) -> Self {
        SliceVec { buf, len: 0 }
    }
}

impl<T: Copy> Sink<T> for SliceVec<'_, T> {
    fn push(&mut self, value: T) -> bool {
        match self.buf.get_mut(self.len) {
            Some(cell) => {
                *cell = value;
                // Cannot overflow: `len < buf.len()`, checked by `get_mut`.
                self.len = self.len.saturating_add(1);
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn room(&self) -> usize {
        self.buf.len().saturating_sub(self.len)
    }

    fn as_slice(&self) -> &[T] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

#[cfg(any(test, feature = "std"))]
impl<T> Sink<T> for std::vec::Vec<T> {
    fn push(&mut self, value: T) -> bool {
        std::vec::Vec::push(self, value);
        true
    }

    fn len(&self) -> usize {
        std::vec::Vec::len(self)
    }

    fn truncate(&mut self, len: usize) {
        std::vec::Vec::truncate(self, len)
    }

    fn room(&self) -> usize {
        usize::MAX
    }

    fn as_slice(&self) -> &[T] {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_vec_stops_at_its_slice() {
        let mut buf = [0u32; 2];
        let mut list = SliceVec::new(&mut buf);
        assert!(list.push(1) && list.push(2));
        assert!(!list.push(3), "full");
        assert_eq!(list.as_slice(), &[1, 2]);
        list.truncate(1);
        assert_eq!((list.len(), list.room()), (1, 1));
    }
}
