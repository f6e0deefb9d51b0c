//! A tiny fixed-size iterator for the folds: every event makes at most three changes.

/// At most three items (no event makes more changes), without allocating: the fold
/// runs for every event of a replay.
#[derive(Debug, Clone)]
pub struct Few<T> {
    items: [Option<T>; 3],
    next: usize,
}

impl<T> Few<T> {
    pub fn none() -> Self {
        Self::of([None, None, None])
    }

    pub fn one(item: T) -> Self {
        Self::of([Some(item), None, None])
    }

    /// The present items, in order.
    pub fn of(items: [Option<T>; 3]) -> Self {
        Few { items, next: 0 }
    }

    /// Each remaining item through `f`, still without allocating (items already
    /// yielded were taken out of their slots).
    pub fn map_each<U>(self, mut f: impl FnMut(T) -> U) -> Few<U> {
        Few::of(self.items.map(|item| item.map(&mut f)))
    }
}

impl<T> Iterator for Few<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        while let Some(slot) = self.items.get_mut(self.next) {
            self.next += 1;
            if let Some(item) = slot.take() {
                return Some(item);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_yields_the_present_items_in_order() {
        let few = Few::of([Some(1), None, Some(3)]);
        assert_eq!(few.clone().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(few.map_each(|n| n * 10).collect::<Vec<_>>(), vec![10, 30]);
        let mut partly = Few::of([Some(1), Some(2), Some(3)]);
        assert_eq!(partly.next(), Some(1));
        assert_eq!(partly.map_each(|n| n).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(Few::<u8>::none().count(), 0);
    }
}
