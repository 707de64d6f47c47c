//! Tables a write reaches beyond the ones it names, from the catalog: a
//! foreign key with ON DELETE/UPDATE CASCADE, SET NULL or SET DEFAULT
//! changes the referencing table, and a write to a partition or an
//! inheritance child changes what its parents read. Read-your-writes
//! consults this so that another client's read of such a table waits for
//! the write like a read of the table written.
//!
//! Both questions are answered by one hash lookup: the closures are
//! computed when the catalog is read (`cluster::catalog`), not per query. A write
//! through a parent is found from the other side, by a read of a partition
//! looking at its ancestors' marks too, so that a write to a parent with a
//! thousand partitions records one name, not a thousand.
//!
//! Names are the classifier's canonical ones (see the `routing` module
//! docs, "Table names"): every table is known bare and schema-qualified.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// A table as the catalog names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Relation {
    pub schema: String,
    pub name: String,
}

/// One catalog fact that makes a write reach another table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Edge {
    /// A foreign key on `referencing` whose ON DELETE or ON UPDATE action
    /// writes it when `referenced` is written.
    Cascade {
        referenced: Relation,
        referencing: Relation,
    },
    /// `child` is a partition of, or inherits from, `parent`.
    Inherits { child: Relation, parent: Relation },
}

/// What writes reach and what reads must look at, by canonical name.
#[derive(Debug, Default)]
pub struct Related {
    /// Written table → the other tables the write changes.
    also_written: HashMap<Arc<str>, Box<[Arc<str>]>>,
    /// Read table → its ancestors, whose own writes it shows.
    ancestors: HashMap<Arc<str>, Box<[Arc<str>]>>,
}

impl Related {
    /// Builds both maps from the catalog's edges (of any number of
    /// databases: same-named tables are merged, which can only keep a read
    /// on the primary needlessly).
    pub fn build(edges: &[Edge]) -> Related {
        let mut cascades: HashMap<&Relation, Vec<&Relation>> = HashMap::new();
        let mut parents: HashMap<&Relation, Vec<&Relation>> = HashMap::new();
        for edge in edges {
            match edge {
                Edge::Cascade {
                    referenced,
                    referencing,
                } => cascades.entry(referenced).or_default().push(referencing),
                Edge::Inherits { child, parent } => parents.entry(child).or_default().push(parent),
            }
        }
        let tables: BTreeSet<&Relation> = cascades.keys().chain(parents.keys()).copied().collect();
        let mut names = Names::default();
        let mut also: HashMap<Arc<str>, BTreeSet<Arc<str>>> = HashMap::new();
        let mut up: HashMap<Arc<str>, BTreeSet<Arc<str>>> = HashMap::new();
        for table in tables {
            let keys = names.of(table);
            // A write changes the table's ancestors and, through foreign
            // keys, referencing tables (and theirs, transitively).
            let reached = closure(table, |t| {
                let c = cascades.get(t).into_iter().flatten();
                c.chain(parents.get(t).into_iter().flatten()).copied()
            });
            let ancestors = closure(table, |t| parents.get(t).into_iter().flatten().copied());
            for (map, set) in [(&mut also, reached), (&mut up, ancestors)] {
                if set.is_empty() {
                    continue;
                }
                let values: Vec<Arc<str>> = set.iter().flat_map(|r| names.of(r)).collect();
                for key in &keys {
                    map.entry(key.clone())
                        .or_default()
                        .extend(values.iter().cloned());
                }
            }
        }
        let boxed = |m: HashMap<Arc<str>, BTreeSet<Arc<str>>>| {
            m.into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect()
        };
        Related {
            also_written: boxed(also),
            ancestors: boxed(up),
        }
    }

    /// The tables other than `table` a write to it changes.
    pub fn also_written(&self, table: &str) -> &[Arc<str>] {
        self.also_written.get(table).map_or(&[], |v| v)
    }

    /// The ancestors of `table`: a write to one is visible reading it.
    pub fn ancestors(&self, table: &str) -> &[Arc<str>] {
        self.ancestors.get(table).map_or(&[], |v| v)
    }

    /// Tables with anything recorded (for logs).
    pub fn len(&self) -> usize {
        self.also_written.len().max(self.ancestors.len())
    }

    pub fn is_empty(&self) -> bool {
        self.also_written.is_empty() && self.ancestors.is_empty()
    }
}

/// Every relation reachable from `start` by `next`, `start` excluded.
fn closure<'a, I>(start: &'a Relation, next: impl Fn(&'a Relation) -> I) -> BTreeSet<&'a Relation>
where
    I: Iterator<Item = &'a Relation>,
{
    let mut seen: HashSet<&Relation> = HashSet::from([start]);
    let mut todo = vec![start];
    let mut out = BTreeSet::new();
    while let Some(t) = todo.pop() {
        for n in next(t) {
            if seen.insert(n) {
                out.insert(n);
                todo.push(n);
            }
        }
    }
    out
}

/// Interned canonical names: `name` and `schema.name`.
#[derive(Default)]
struct Names(HashMap<String, Arc<str>>);

impl Names {
    fn of(&mut self, r: &Relation) -> [Arc<str>; 2] {
        let mut intern = |s: String| self.0.entry(s.clone()).or_insert_with(|| s.into()).clone();
        let bare = intern(r.name.clone());
        let qualified = intern(format!("{}.{}", r.schema, r.name));
        [bare, qualified]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &str) -> Relation {
        Relation {
            schema: "public".into(),
            name: name.into(),
        }
    }

    fn cascade(from: &str, to: &str) -> Edge {
        Edge::Cascade {
            referenced: rel(from),
            referencing: rel(to),
        }
    }

    fn inherits(child: &str, parent: &str) -> Edge {
        Edge::Inherits {
            child: rel(child),
            parent: rel(parent),
        }
    }

    fn names(list: &[Arc<str>]) -> Vec<&str> {
        list.iter().map(|s| &**s).collect()
    }

    #[test]
    fn cascades_are_followed_transitively_and_under_both_names() {
        let r = Related::build(&[cascade("a", "b"), cascade("b", "c"), cascade("c", "a")]);
        let want = ["b", "c", "public.b", "public.c"];
        assert_eq!(names(r.also_written("a")), want);
        assert_eq!(names(r.also_written("public.a")), want);
        assert!(r.also_written("unrelated").is_empty());
        assert!(r.ancestors("a").is_empty());
    }

    #[test]
    fn a_partition_write_reaches_its_ancestors_and_their_cascades() {
        // events → events_2024 → events_2024_q1; audit references events.
        let r = Related::build(&[
            inherits("events_2024", "events"),
            inherits("events_2024_q1", "events_2024"),
            inherits("events_2025", "events"),
            cascade("events", "audit"),
        ]);
        let got = names(r.also_written("events_2024_q1"));
        assert_eq!(
            got,
            [
                "audit",
                "events",
                "events_2024",
                "public.audit",
                "public.events",
                "public.events_2024"
            ]
        );
        // A sibling is not written; a read of it looks at its ancestors.
        assert!(!got.contains(&"events_2025"));
        assert_eq!(
            names(r.ancestors("events_2024_q1")),
            [
                "events",
                "events_2024",
                "public.events",
                "public.events_2024"
            ]
        );
        // A write to the parent records only the parent (and its cascade).
        assert_eq!(names(r.also_written("events")), ["audit", "public.audit"]);
        assert!(r.ancestors("events").is_empty());
    }

    #[test]
    fn same_named_tables_in_two_schemas_merge_under_the_bare_name() {
        let other = Relation {
            schema: "s2".into(),
            name: "a".into(),
        };
        let r = Related::build(&[
            cascade("a", "b"),
            Edge::Cascade {
                referenced: other,
                referencing: rel("c"),
            },
        ]);
        assert_eq!(
            names(r.also_written("a")),
            ["b", "c", "public.b", "public.c"]
        );
        assert_eq!(names(r.also_written("s2.a")), ["c", "public.c"]);
        assert!(Related::default().is_empty());
    }
}
