//! The classifications made once for a unit of work, carried from the idle
//! path and routing to the relay, so that no statement is classified twice.

use std::collections::VecDeque;

use crate::routing::Classified;

/// The classifications of a unit's Query or unnamed-Parse frames, in the
/// order the relay sends them. Each is filed with its frame's length: a
/// frame of another length takes nothing (and empties the list), so a
/// classification can never be used for a statement it was not made for.
/// Most units have one: it is kept inline, so carrying allocates nothing.
#[derive(Default)]
pub struct Carried {
    first: Option<(usize, Classified)>,
    rest: VecDeque<(usize, Classified)>,
}

impl Carried {
    /// Files the classification of a frame `len` bytes long.
    #[inline]
    pub fn push(&mut self, len: usize, class: Classified) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some((len, class));
        } else {
            self.rest.push_back((len, class));
        }
    }

    /// The classification filed for the next frame, if it is `len` bytes
    /// long (the frame it was made for).
    ///
    /// Why the length is looked at in place: taking the pair out first and
    /// then the classification out of it moved the whole `Classified`
    /// twice, every statement.
    #[inline]
    pub fn take(&mut self, len: usize) -> Option<Classified> {
        match &self.first {
            Some((filed, _)) if *filed == len => self.first.take().map(|(_, class)| class),
            Some(_) => {
                self.clear();
                None
            }
            None => self.take_rest(len),
        }
    }

    /// [`take`](Self::take) past the first (a pipelined unit's later
    /// frames).
    fn take_rest(&mut self, len: usize) -> Option<Classified> {
        let (filed, class) = self.rest.pop_front()?;
        if filed == len {
            return Some(class);
        }
        self.clear();
        None
    }

    /// Forgets every classification; nothing to drop when nothing is
    /// filed (the usual case, once per unit).
    #[inline]
    pub fn clear(&mut self) {
        if self.first.is_some() {
            self.first = None;
        }
        if !self.rest.is_empty() {
            self.rest.clear();
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Classifier;

    #[test]
    fn classifications_come_out_in_order_for_their_own_frames_only() {
        let c = Classifier::new(&[], 100, 0);
        let mut carried = Carried::default();
        carried.push(10, c.classify("select 1"));
        carried.push(20, c.classify("insert into t values (1)"));
        carried.push(30, c.classify("select 3"));
        let first = carried.take(10).expect("first");
        assert_eq!(
            &*first.info.normalized,
            &*c.classify("select 1").info.normalized
        );
        assert!(carried.take(20).is_some());
        // A frame it was not made for takes nothing, and nothing after it.
        assert!(carried.take(31).is_none());
        assert!(carried.is_empty());
        assert!(carried.take(30).is_none());
    }
}
