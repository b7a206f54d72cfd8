//! Test hooks (feature `test-hooks`, off in the shipped binary): pause a read inside its
//! database load (every read without a cache; a miss's load with one) or between its load and
//! its fill, so tests can make races deterministic.

use std::sync::Arc;

use futures_util::future::BoxFuture;

type Hook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Default, Clone)]
pub struct Hooks {
    pub before_fill: Option<Hook>,
    pub during_load: Option<Hook>,
}

impl Hooks {
    pub(super) async fn before_fill(&self) {
        if let Some(hook) = &self.before_fill {
            hook().await;
        }
    }

    pub(super) async fn during_load(&self) {
        if let Some(hook) = &self.during_load {
            hook().await;
        }
    }
}
