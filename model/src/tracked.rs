//! [`Tracked`]: a value that knows whether it may have changed since the last snapshot, so
//! that a reset copies back only what a case touched.

use std::ops::{Deref, DerefMut};

/// A value with a flag set on every mutable access. A new value counts as changed; taking a
/// snapshot clears the flag ([`Tracked::clean`]), and a reset copies the snapshot's value back
/// only when the flag is set ([`Tracked::restore`]). Comparison, hashing and debug output see
/// the value alone.
#[derive(Clone)]
pub struct Tracked<T> {
    value: T,
    changed: bool,
}

impl<T> Tracked<T> {
    /// `value`, counted as changed.
    pub fn new(value: T) -> Self {
        Tracked {
            value,
            changed: true,
        }
    }

    /// Whether the value was borrowed mutably since the last [`Tracked::clean`].
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Counts the value as equal to a snapshot just taken of it.
    pub fn clean(&mut self) {
        self.changed = false;
    }
}

impl<T: Clone> Tracked<T> {
    /// Takes the value of `snapshot` back if this one was borrowed mutably since the snapshot
    /// was taken of it; either way, it is clean after.
    pub fn restore(&mut self, snapshot: &Tracked<T>) {
        if self.changed {
            self.value.clone_from(&snapshot.value);
            self.changed = false;
        }
    }
}

impl<T: Default> Default for Tracked<T> {
    fn default() -> Self {
        Tracked::new(T::default())
    }
}

impl<T> Deref for Tracked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Tracked<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.changed = true;
        &mut self.value
    }
}

impl<'a, T> IntoIterator for &'a Tracked<T>
where
    &'a T: IntoIterator,
{
    type Item = <&'a T as IntoIterator>::Item;
    type IntoIter = <&'a T as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        (&self.value).into_iter()
    }
}

impl<T: PartialEq> PartialEq for Tracked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Tracked<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for Tracked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::Tracked;

    #[test]
    fn only_a_mutable_borrow_marks_the_value_changed() {
        let mut t = Tracked::new(vec![1, 2]);
        assert!(t.changed(), "a new value counts as changed");
        t.clean();
        let snapshot = t.clone();
        assert_eq!(t.len(), 2);
        assert!(!t.changed(), "a shared borrow");
        t.push(3);
        assert!(t.changed());
        t.restore(&snapshot);
        assert_eq!(*t, vec![1, 2]);
        assert!(!t.changed());
        // A clean value is left as it is, even when the snapshot differs.
        let other = Tracked::new(vec![9]);
        t.restore(&other);
        assert_eq!(*t, vec![1, 2]);
    }
}
