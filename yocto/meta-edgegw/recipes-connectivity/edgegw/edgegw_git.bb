SUMMARY = "edgegw IoT edge gateway daemon"
DESCRIPTION = "One daemon for Raspberry-Pi-class gateways: CoAP, CoAP over DTLS and \
               serial sensors in, a durable SQLite outbox, MQTT over mutual TLS out, with \
               a local (standalone) auth store. Runs as the unprivileged edgegw user \
               under a hardened systemd unit."
HOMEPAGE = "https://example.invalid/edgegw"
BUGTRACKER = "https://example.invalid/edgegw/issues"
SECTION = "net"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=38bacfc8b4e4f6d01b0dc0fc261ef7d9"
CVE_PRODUCT = "edgegw"

# The layer lives in the edgegw repository: build the commit it came from. SRCREV follows the
# branch by default; pin it for a reproducible image (see the layer README), and keep
# edgegw-crates.inc from the same commit (scripts/yocto-crates regenerates it).
PV = "0.1.0+git"
SRC_URI = "git://example.invalid/edgegw.git;protocol=https;branch=main"
SRCREV ?= "${AUTOREV}"

require edgegw-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# A workspace: build only the daemon's package (not the tests); Cargo.lock is at the root,
# where `bitbake -c update_crates edgegw` finds it.
CARGO_SRC_DIR = "gateway"
# aws-lc-sys (the one crypto provider) builds with the cc crate, no cmake.
export AWS_LC_SYS_CMAKE_BUILDER = "0"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/edgegw --no-create-home \
                       --shell ${base_sbindir}/nologin --user-group edgegw"

SYSTEMD_SERVICE:${PN} = "edgegw.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/edgegw.service ${D}${systemd_system_unitdir}/edgegw.service
    install -d ${D}${nonarch_libdir}/sysusers.d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/sysusers.d/edgegw.conf ${D}${nonarch_libdir}/sysusers.d/edgegw.conf
    install -m 0644 ${S}/systemd/tmpfiles.d/edgegw.conf ${D}${nonarch_libdir}/tmpfiles.d/edgegw.conf
    # The configuration may hold the admin token: readable by root and the edgegw group only.
    install -d -m 0750 -g edgegw ${D}${sysconfdir}/edgegw
    install -m 0640 -g edgegw ${S}/gateway/edgegw.toml ${D}${sysconfdir}/edgegw/edgegw.toml
}

FILES:${PN} += "${nonarch_libdir}/sysusers.d/edgegw.conf ${nonarch_libdir}/tmpfiles.d/edgegw.conf"
CONFFILES:${PN} = "${sysconfdir}/edgegw/edgegw.toml"
