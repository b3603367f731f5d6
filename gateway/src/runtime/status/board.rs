//! Board identity as the status report shows it: device-tree model and serial, machine id,
//! wired MAC. Read once by the composition root ([`BoardStatus::read`]), never by a
//! constructor: it does not change while the daemon runs.

use hal::identity::{BoardIdentity, SysRoot};
use serde::Serialize;

/// Board identity as shown in the status report; absent parts are left out.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BoardStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl BoardStatus {
    pub fn read(root: &SysRoot) -> Self {
        let id = BoardIdentity::read(root);
        let (nic, mac) = id.wired_nic.unzip();
        Self {
            model: id.model,
            serial_number: id.serial_number,
            machine_id: id.machine_id,
            nic,
            mac,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_the_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc/device-tree")).unwrap();
        std::fs::write(root.join("proc/device-tree/model"), "Raspberry Pi 5\0").unwrap();
        std::fs::create_dir_all(root.join("sys/class/net/end0/device")).unwrap();
        std::fs::write(
            root.join("sys/class/net/end0/address"),
            "2c:cf:67:00:00:01\n",
        )
        .unwrap();
        let status = BoardStatus::read(&SysRoot::at(root));
        assert_eq!(status.model.as_deref(), Some("Raspberry Pi 5"));
        assert_eq!(status.nic.as_deref(), Some("end0"));
        assert_eq!(status.mac.as_deref(), Some("2c:cf:67:00:00:01"));
        let json = serde_json::to_value(&status).unwrap();
        assert!(json.get("serial_number").is_none(), "{json}");
    }
}
