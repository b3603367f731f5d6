//! Per-port state for `edgegw status`: shared by the port tasks (writers) and the control
//! socket (reader). Updated on state changes and after each batch of answers, never per byte.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

/// One port as `edgegw status` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PortStatus {
    /// As configured.
    pub path: String,
    /// `open` or `waiting` (missing or unplugged; retried with backoff).
    pub state: &'static str,
    /// The device node it resolved to at the last open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The client the current session speaks for (authenticated or bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub opens: u64,
    /// Messages acknowledged durable (`OK <seq>`).
    pub published: u64,
    /// `ERR` answers.
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_close: Option<String>,
}

/// The serial adapter's ports. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SerialStatus(
    Arc<Mutex<Vec<PortStatus>>>,
    crate::runtime::metrics::Metrics,
);

impl SerialStatus {
    /// Ports that also count into the daemon's shared metrics (adapter `serial`).
    pub fn with_metrics(metrics: crate::runtime::metrics::Metrics) -> Self {
        Self(Arc::default(), metrics)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<PortStatus>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// All ports, in configuration order.
    pub fn snapshot(&self) -> Vec<PortStatus> {
        self.lock().clone()
    }

    /// Adds a port (state `waiting`) and returns its handle.
    pub fn register(&self, path: &str) -> PortHandle {
        let mut ports = self.lock();
        ports.push(PortStatus {
            path: path.to_owned(),
            state: "waiting",
            ..PortStatus::default()
        });
        PortHandle {
            all: self.clone(),
            index: ports.len() - 1,
        }
    }
}

/// One port's entry.
#[derive(Debug, Clone)]
pub struct PortHandle {
    all: SerialStatus,
    index: usize,
}

impl PortHandle {
    /// The shared metrics the port counts into.
    pub fn metrics(&self) -> &crate::runtime::metrics::Metrics {
        &self.all.1
    }

    pub fn update(&self, f: impl FnOnce(&mut PortStatus)) {
        if let Some(port) = self.all.lock().get_mut(self.index) {
            f(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_listed_in_order_and_updated() {
        let status = SerialStatus::default();
        let a = status.register("/dev/ttyA");
        let _b = status.register("/dev/ttyB");
        a.update(|p| {
            p.state = "open";
            p.published += 2;
        });
        let snap = status.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!((snap[0].state, snap[0].published), ("open", 2));
        assert_eq!(snap[1].state, "waiting");
        let json = serde_json::to_value(&snap[1]).unwrap();
        assert!(json.get("device").is_none(), "{json}");
    }
}
