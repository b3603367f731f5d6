SUMMARY = "edgegw IoT edge gateway daemon"
DESCRIPTION = "One daemon for Raspberry-Pi-class gateways: CoAP, CoAP over DTLS and \
               serial sensors in, a durable SQLite outbox, MQTT over mutual TLS out, with \
               a local (standalone) auth store. Runs as the unprivileged edgegw user \
               under a hardened systemd unit."
HOMEPAGE = "https://example.invalid/edgegw"
BUGTRACKER = "https://example.invalid/edgegw/issues"
SECTION = "net"
# LICENSE (edgegw's MIT and every crate the binary links) and the crates' license files come
# from edgegw-crates.inc, generated from Cargo.lock by scripts/yocto-crates.
LIC_FILES_CHKSUM = "file://LICENSE;md5=38bacfc8b4e4f6d01b0dc0fc261ef7d9"
CVE_PRODUCT = "edgegw"

require edgegw-crates.inc

# Where the source comes from (layer README, "Source"):
# - by default, the edgegw checkout this layer lives in (yocto/meta-edgegw inside it), with
#   externalsrc: nothing is fetched for edgegw itself, so parsing needs no network and
#   always builds the tree the layer came with;
# - a release build sets EDGEGW_SRCREV (local.conf; `scripts/yocto-crates --srcrev REV`
#   prints the lines) and fetches that pinned commit from EDGEGW_GIT_URL with git.
# Either way do_configure checks that the tree's Cargo.lock is the one edgegw-crates.inc
# was generated from.
EDGEGW_SRCREV ??= ""
EDGEGW_CHECKOUT := "${@os.path.normpath(os.path.join(d.getVar('THISDIR'), '..', '..', '..', '..'))}"
PV = "${EDGEGW_VERSION}+git"
SRC_URI += "${@'${EDGEGW_GIT_URL}' if d.getVar('EDGEGW_SRCREV') else ''}"
SRCREV = "${EDGEGW_SRCREV}"
EXTERNALSRC ?= "${@'' if d.getVar('EDGEGW_SRCREV') else d.getVar('EDGEGW_CHECKOUT')}"
EXTERNALSRC_BUILD ?= "${@'${WORKDIR}/build' if d.getVar('EXTERNALSRC') else ''}"
# No oe-workdir / oe-logs symlinks in the developer's checkout.
EXTERNALSRC_SYMLINKS = ""

inherit cargo systemd useradd features_check
inherit_defer ${@'' if d.getVar('EDGEGW_SRCREV') else 'externalsrc'}

REQUIRED_DISTRO_FEATURES = "systemd"

# A workspace: build only the daemon's package (not the tests). Cargo.lock is at the
# workspace root, not next to gateway/Cargo.toml.
CARGO_SRC_DIR = "gateway"
CARGO_LOCK_PATH = "${S}/Cargo.lock"
# aws-lc-sys (the one crypto provider) builds with the cc crate, no cmake.
export AWS_LC_SYS_CMAKE_BUILDER = "0"
# Seeded from the kernel's getrandom, not aws-lc's CPU-jitter collector (README, "Crypto
# provider"; the same as .cargo/config.toml for cargo, the .deb and the musl builds).
export AWS_LC_SYS_NO_JITTER_ENTROPY = "1"
# The release profile strips for cargo users (.deb, static musl); here OE strips and splits
# the debug symbols into ${PN}-dbg itself (a pre-stripped binary fails the already-stripped QA).
export CARGO_PROFILE_RELEASE_STRIP = "none"

python edgegw_check_cargo_lock() {
    import hashlib
    lock = d.getVar('CARGO_LOCK_PATH')
    if not os.path.isfile(lock):
        bb.fatal("%s does not exist: %s is not an edgegw checkout; use meta-edgegw from inside "
                 "one, or set EDGEGW_SRCREV (layer README)" % (lock, d.getVar('S')))
    with open(lock, 'rb') as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if got != d.getVar('EDGEGW_CARGO_LOCK_SHA256'):
        bb.fatal("%s (sha256 %s) is not the Cargo.lock edgegw-crates.inc was generated from: "
                 "take meta-edgegw from the same edgegw commit, or run scripts/yocto-crates "
                 "there" % (lock, got))
}
edgegw_check_cargo_lock[doc] = "Fails when the source tree's Cargo.lock is not the one edgegw-crates.inc was generated from"
do_configure[prefuncs] += "edgegw_check_cargo_lock"

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
