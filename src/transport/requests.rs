//! The requests a connection sent and waits for: each answer (or failure) goes to its
//! callback exactly once.

use std::collections::HashMap;
use std::time::Instant;

use crate::error::RpcError;
use crate::sync::Mutex;

/// What to do with the answer to one request; called exactly once.
pub(crate) type Callback = Box<dyn FnOnce(Result<Vec<u8>, RpcError>) + Send>;

struct Pending {
    callback: Callback,
    /// The request's own deadline; `None` when the caller set none.
    deadline: Option<Instant>,
}

#[derive(Default)]
struct Table {
    pending: HashMap<u64, Pending>,
    /// Pending requests without a deadline of their own.
    open_ended: usize,
    /// Since when some request without a deadline has waited: the peer's silence is
    /// counted from the later of this and its last byte.
    waiting_since: Option<Instant>,
    closed: bool,
}

/// The table of outstanding requests of one connection.
#[derive(Default)]
pub(crate) struct Requests {
    table: Mutex<Table>,
}

impl Requests {
    /// Registers request `id`; gives the callback back when the table is closed.
    pub(crate) fn insert(
        &self,
        id: u64,
        callback: Callback,
        deadline: Option<Instant>,
    ) -> Result<usize, Callback> {
        let mut table = self.table.lock();
        if table.closed {
            return Err(callback);
        }
        if deadline.is_none() {
            table.open_ended += 1;
            if table.open_ended == 1 {
                table.waiting_since = Some(Instant::now());
            }
        }
        table.pending.insert(id, Pending { callback, deadline });
        Ok(table.pending.len())
    }

    /// Takes request `id`'s callback: its answer came, or the caller gave up on it.
    pub(crate) fn take(&self, id: u64) -> Option<Callback> {
        let mut table = self.table.lock();
        let pending = table.pending.remove(&id)?;
        if pending.deadline.is_none() {
            table.open_ended -= 1;
            if table.open_ended == 0 {
                table.waiting_since = None;
            }
        }
        Some(pending.callback)
    }

    /// Closes the table and takes every callback left; later inserts are refused.
    pub(crate) fn close(&self) -> Vec<Callback> {
        let mut table = self.table.lock();
        table.closed = true;
        table.open_ended = 0;
        table.waiting_since = None;
        table
            .pending
            .drain()
            .map(|(_, pending)| pending.callback)
            .collect()
    }

    /// Requests outstanding.
    pub(crate) fn len(&self) -> usize {
        self.table.lock().pending.len()
    }

    /// Requests outstanding that have no deadline of their own: those a silent peer
    /// must not keep waiting forever (a request with a deadline ends at it).
    pub(crate) fn open_ended(&self) -> usize {
        self.table.lock().open_ended
    }

    /// Since when some request without a deadline of its own has been waiting.
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        self.table.lock().waiting_since
    }
}
