//! A client's committed write, announced to the fleet: the client's
//! ReadyForQuery is held until the announcement has committed, so that no
//! request the client makes after learning of its commit can reach another
//! member before that member's listening session was told (see
//! `crate::fleet::writes` for the window that remains).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::relay::Later;
use crate::proxy::Shared;
use crate::routing::policy::ClientRouting;

/// What a committed write's ReadyForQuery waits for.
pub type Announced = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A transaction that wrote `tables` committed: with a fleet, announces
/// it (and notes its ticket for `SHOW pgsidecar.last_write_lsn`). `None`
/// without a fleet, or when nothing is announced.
pub fn committed(
    shared: &Shared,
    routing: &mut ClientRouting,
    tables: &[Arc<str>],
) -> Option<Announced> {
    let writes = shared.fleet.as_ref()?.writes();
    let ticket = writes.publish(tables)?;
    routing.announced(ticket);
    Some(Box::pin(writes.wait(ticket)))
}

/// The ReadyForQuery `frame`, sent once `announced` is over.
pub fn ready_after(announced: Announced, frame: &[u8]) -> Later {
    let frame = Bytes::copy_from_slice(frame);
    Box::pin(async move {
        announced.await;
        frame
    })
}
