//! Keeps the shared Redis connected and listened to, in the background: a new `[redis]`
//! (at start, or from a reload) is connected at once, so a Redis that cannot be reached, or
//! whose certificate does not verify, is logged before any request needs it; with a shared
//! cache tier, every instance listens for purges published by any other and drops the purged
//! entries from its memory.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use portico_plugins::redis_store::{Event, RedisStore};

use crate::cache::shared::{PurgeMessage, PURGE_CHANNEL};
use crate::state::GatewayState;

/// How soon a reload's new Redis is connected and listened to.
const LOOK_EVERY: Duration = Duration::from_millis(250);

pub struct RedisConnections {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for RedisConnections {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut connected: Option<Arc<RedisStore>> = None;
        let mut listening: Option<(Arc<RedisStore>, tokio::task::JoinHandle<()>)> = None;
        loop {
            let store = self
                .state
                .current()
                .reuse
                .redis
                .as_ref()
                .map(|(_, s)| Arc::clone(s));
            if let Some(store) = &store {
                if !connected.as_ref().is_some_and(|c| Arc::ptr_eq(c, store)) {
                    store.connect_now();
                    connected = Some(Arc::clone(store));
                }
            }
            let wanted = self
                .state
                .cache
                .shared()
                .map(|tier| Arc::clone(tier.redis()));
            let same = match (&listening, &wanted) {
                (Some((current, _)), Some(store)) => Arc::ptr_eq(current, store),
                (None, None) => true,
                _ => false,
            };
            if !same {
                if let Some((_, task)) = listening.take() {
                    task.abort();
                }
                if let Some(store) = wanted {
                    let task =
                        tokio::spawn(listen_for_purges(self.state.cache, Arc::clone(&store)));
                    listening = Some((store, task));
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }
}

async fn listen_for_purges(cache: &'static crate::cache::CacheStore, store: Arc<RedisStore>) {
    store
        .subscribe(PURGE_CHANNEL, |event| match event {
            Event::Message(bytes) => match PurgeMessage::decode(bytes) {
                Some(message) => {
                    let purged = cache.purge(&message);
                    log::debug!("cache purge from another instance ({message:?}): {purged} removed here");
                }
                None => log::warn!("ignored a message on {PURGE_CHANNEL} that is not a purge"),
            },
            Event::Resubscribed => {
                let purged = cache.purge_all();
                log::warn!(
                    "listening for cache purges again after losing the subscription; emptied the \
                     memory tier ({purged} entries) since a purge may have been missed"
                );
            }
        })
        .await;
}
