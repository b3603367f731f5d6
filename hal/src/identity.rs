//! Board identity read through an injectable root, so tests point it at a fake `/etc`,
//! `/proc` and `/sys` tree: device-tree model and serial number, machine id, and the MAC
//! address of the first wired network interface.

use std::path::{Path, PathBuf};

/// Where board identity files are read from: `/` on a device, a temporary tree in tests.
#[derive(Debug, Clone)]
pub struct SysRoot(PathBuf);

impl SysRoot {
    /// The real root filesystem.
    pub fn system() -> Self {
        Self(PathBuf::from("/"))
    }

    /// A fake root (tests).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// `rel` (absolute on the device, e.g. `/sys/class/leds`) under this root.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel.trim_start_matches('/'))
    }
}

/// What identifies this board, each part `None` when the board does not have it (an x86 VM has
/// no device tree; a board may have only Wi-Fi).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoardIdentity {
    /// Device-tree model, e.g. `Raspberry Pi 4 Model B Rev 1.4`.
    pub model: Option<String>,
    /// Device-tree serial number (on a Pi, the SoC serial).
    pub serial_number: Option<String>,
    /// `/etc/machine-id`.
    pub machine_id: Option<String>,
    /// The first wired NIC (by name order) and its MAC address, lowercase `aa:bb:…`.
    pub wired_nic: Option<(String, String)>,
}

/// Where the device tree is exposed: `/proc/device-tree` is a symlink to the second on most
/// kernels, but either may be missing in a container.
const DEVICE_TREE_DIRS: [&str; 2] = ["/proc/device-tree", "/sys/firmware/devicetree/base"];

impl BoardIdentity {
    /// Reads everything it can; missing parts are `None`, never an error.
    pub fn read(root: &SysRoot) -> Self {
        let from_tree = |name: &str| {
            DEVICE_TREE_DIRS
                .iter()
                .find_map(|dir| read_trimmed(&root.join(dir).join(name)))
        };
        Self {
            model: from_tree("model"),
            serial_number: from_tree("serial-number"),
            machine_id: machine_id(root),
            wired_nic: first_wired_nic(root),
        }
    }
}

/// The first physical, wired interface in name order with a non-zero MAC address. Skipped:
/// loopback, wireless (`wireless/` or `phy80211` present), virtual (no `device` link: bridges,
/// veth, tun, docker), and non-Ethernet link types.
pub fn first_wired_nic(root: &SysRoot) -> Option<(String, String)> {
    let dir = root.join("/sys/class/net");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let nic = dir.join(&name);
        if name == "lo"
            || nic.join("wireless").exists()
            || nic.join("phy80211").exists()
            || !nic.join("device").exists()
        {
            return None;
        }
        // ARPHRD_ETHER = 1; absent type file: assume Ethernet.
        if read_trimmed(&nic.join("type")).is_some_and(|t| t != "1") {
            return None;
        }
        let mac = read_trimmed(&nic.join("address"))?.to_ascii_lowercase();
        let valid = mac.len() == 17
            && mac.split(':').count() == 6
            && mac
                .split(':')
                .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
            && mac != "00:00:00:00:00:00";
        valid.then_some((name, mac))
    })
}

/// The host's machine id (`/etc/machine-id`), trimmed; `None` when absent or empty.
pub fn machine_id(root: &SysRoot) -> Option<String> {
    read_trimmed(&root.join("/etc/machine-id"))
}

fn read_trimmed(path: &Path) -> Option<String> {
    // Identity files are tiny; cap the read so a strange file cannot blow up memory.
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_is_read_from_the_injected_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/machine-id"), "0123abcd\n").unwrap();
        assert_eq!(
            machine_id(&SysRoot::at(dir.path())).as_deref(),
            Some("0123abcd")
        );
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn nic(root: &Path, name: &str, mac: &str, physical: bool, wireless: bool) {
        write(
            root,
            &format!("sys/class/net/{name}/address"),
            &format!("{mac}\n"),
        );
        write(root, &format!("sys/class/net/{name}/type"), "1\n");
        if physical {
            std::fs::create_dir_all(root.join(format!("sys/class/net/{name}/device"))).unwrap();
        }
        if wireless {
            std::fs::create_dir_all(root.join(format!("sys/class/net/{name}/wireless"))).unwrap();
        }
    }

    #[test]
    fn board_identity_from_a_fake_raspberry_pi_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // The device tree strings are NUL-terminated.
        write(
            root,
            "proc/device-tree/model",
            "Raspberry Pi 4 Model B Rev 1.4\0",
        );
        write(root, "proc/device-tree/serial-number", "10000000abcdef01\0");
        write(root, "etc/machine-id", "0123abcd\n");
        nic(root, "lo", "00:00:00:00:00:00", false, false);
        nic(root, "docker0", "02:42:ac:11:00:01", false, false);
        nic(root, "wlan0", "DC:A6:32:00:00:02", true, true);
        nic(root, "eth0", "DC:A6:32:00:00:01", true, false);
        nic(root, "eth1", "dc:a6:32:00:00:09", true, false);
        let id = BoardIdentity::read(&SysRoot::at(root));
        assert_eq!(id.model.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(id.serial_number.as_deref(), Some("10000000abcdef01"));
        assert_eq!(id.machine_id.as_deref(), Some("0123abcd"));
        assert_eq!(
            id.wired_nic,
            Some(("eth0".to_owned(), "dc:a6:32:00:00:01".to_owned()))
        );
    }

    #[test]
    fn device_tree_falls_back_to_sysfs_and_wireless_only_boards_have_no_wired_mac() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "sys/firmware/devicetree/base/model",
            "Pine64 ROCK64\0",
        );
        nic(root, "wlan0", "dc:a6:32:00:00:02", true, true);
        nic(root, "end0", "00:00:00:00:00:00", true, false);
        let id = BoardIdentity::read(&SysRoot::at(root));
        assert_eq!(id.model.as_deref(), Some("Pine64 ROCK64"));
        assert_eq!(id.serial_number, None);
        assert_eq!(id.machine_id, None);
        assert_eq!(id.wired_nic, None);
    }

    #[test]
    fn an_empty_root_gives_an_empty_identity() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            BoardIdentity::read(&SysRoot::at(dir.path())),
            BoardIdentity::default()
        );
    }

    #[test]
    fn missing_or_blank_machine_id_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(machine_id(&SysRoot::at(dir.path())), None);
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/machine-id"), " \n").unwrap();
        assert_eq!(machine_id(&SysRoot::at(dir.path())), None);
    }
}
