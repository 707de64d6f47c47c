//! Console replies: a result set of text columns, or a bare command tag.

use bytes::BytesMut;

use crate::protocol::backend;

/// What a console command answers.
pub enum Reply {
    Rows(Table),
    Done(&'static str),
    /// A command tag after WARNING notices.
    Warned(&'static str, Vec<String>),
}

impl Reply {
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Rows(t) => t.encode(out),
            Reply::Done(tag) => backend::command_complete(out, tag),
            Reply::Warned(tag, warnings) => {
                for warning in warnings {
                    backend::warning(out, warning);
                }
                backend::command_complete(out, tag);
            }
        }
    }
}

/// Text columns and rows (`None` is NULL).
pub struct Table {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: &'static [&'static str]) -> Self {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    fn encode(&self, out: &mut BytesMut) {
        backend::row_description(out, self.columns);
        for row in &self.rows {
            let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
            backend::data_row(out, &values);
        }
        backend::command_complete(out, &format!("SHOW {}", self.rows.len()));
    }
}

/// Shorthand for a non-NULL cell.
pub fn cell(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}
