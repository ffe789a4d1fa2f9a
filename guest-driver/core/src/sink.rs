//! Working storage the caller provides: the core allocates nothing.
//!
//! A [`Sink`] is where the core appends what it collects (slots popped
//! from the free stack, the segments of received frames): a [`Bounded`]
//! list (the endpoint's, in memory its caller allocated once), or, with
//! the `std` feature, a `Vec`.

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

/// A list of at most `N` items kept inline: the endpoint's working lists
/// (in [`crate::endpoint::Buffers`], which the caller allocates once).
#[derive(Clone, Debug)]
pub struct Bounded<T, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy, const N: usize> Bounded<T, N> {
    /// An empty list; `fill` is the value unused entries hold.
    pub const fn new(fill: T) -> Self {
        Bounded {
            items: [fill; N],
            len: 0,
        }
    }

    /// The items held, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.items.get_mut(..self.len).unwrap_or(&mut [])
    }

    /// Empties the list.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps the items for which `keep` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut kept = 0usize;
        for i in 0..self.len {
            let Some(&item) = self.items.get(i) else {
                break;
            };
            if keep(&item) {
                if let Some(cell) = self.items.get_mut(kept) {
                    *cell = item;
                }
                kept = kept.saturating_add(1);
            }
        }
        self.len = kept;
    }

    /// The last `n` items (all when fewer), removed from the list by
    /// [`Bounded::truncate`] to `len() - n` afterwards.
    pub fn last(&self, n: usize) -> &[T] {
        let from = self.len.saturating_sub(n);
        self.items.get(from..self.len).unwrap_or(&[])
    }

    /// Moves `count` items from index `from` on to the end of `dst`, and
    /// closes the gap here; false (and nothing moved) when the range is
    /// not held or `dst` has no room for it.
    pub fn move_range<const M: usize>(
        &mut self,
        from: usize,
        count: usize,
        dst: &mut Bounded<T, M>,
    ) -> bool {
        let Some(end) = from.checked_add(count).filter(|&end| end <= self.len) else {
            return false;
        };
        if dst.room() < count {
            return false;
        }
        if let Some(moved) = self.items.get(from..end) {
            dst.extend_from_slice(moved);
        }
        self.items.copy_within(end..self.len, from);
        self.len = self.len.saturating_sub(count);
        true
    }

    /// Moves every item to the end of `dst` (what fits; the rest stays).
    pub fn move_all<const M: usize>(&mut self, dst: &mut Bounded<T, M>) {
        let moved = dst.extend_from_slice(self.as_slice());
        let len = self.len;
        self.items.copy_within(moved..len, 0);
        self.len = len.saturating_sub(moved);
    }

    /// Appends what fits of `items`; returns how many were appended.
    pub fn extend_from_slice(&mut self, items: &[T]) -> usize {
        let room = N.saturating_sub(self.len);
        let take = items.len().min(room);
        let end = self.len.saturating_add(take);
        if let (Some(dst), Some(src)) = (self.items.get_mut(self.len..end), items.get(..take)) {
            dst.copy_from_slice(src);
            self.len = end;
            take
        } else {
            0
        }
    }
}

impl<T: Copy, const N: usize> Sink<T> for Bounded<T, N> {
    fn push(&mut self, value: T) -> bool {
        match self.items.get_mut(self.len) {
            Some(cell) => {
                *cell = value;
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
        N.saturating_sub(self.len)
    }

    fn as_slice(&self) -> &[T] {
        self.items.get(..self.len).unwrap_or(&[])
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
    fn a_bounded_list_keeps_order_and_its_bound() {
        let mut list = Bounded::<u32, 4>::new(0);
        assert_eq!(list.extend_from_slice(&[1, 2, 3, 4, 5]), 4);
        assert!(!list.push(6));
        list.retain(|&v| v % 2 == 0);
        assert_eq!(list.as_slice(), &[2, 4]);
        assert_eq!(list.last(1), &[4]);
        list.clear();
        assert!(list.is_empty());
    }

    #[test]
    fn ranges_move_between_lists() {
        let mut a = Bounded::<u32, 8>::new(0);
        let mut b = Bounded::<u32, 2>::new(0);
        a.extend_from_slice(&[1, 2, 3, 4, 5]);
        assert!(a.move_range(1, 2, &mut b));
        assert_eq!((a.as_slice(), b.as_slice()), (&[1, 4, 5][..], &[2, 3][..]));
        assert!(!a.move_range(0, 1, &mut b), "no room");
        assert!(!a.move_range(2, 2, &mut b), "not held");
        b.clear();
        a.move_all(&mut b);
        assert_eq!((a.as_slice(), b.as_slice()), (&[5][..], &[1, 4][..]));
    }
}
