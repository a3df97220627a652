#!/usr/bin/env bash
# Builds the Debian package: warren_VERSION-1_ARCH.deb with the broker, brokerctl under its three
# names, the configuration as a conffile, the sandboxed systemd unit, the AppArmor profile, the
# logrotate rule and the maintainer scripts (packaging/debian/). dpkg-deb assembles it and
# dpkg-shlibdeps computes its library dependencies, as Debian's own tooling does.
#
#   packaging/build-deb.sh [--profile release|debug] [--no-build] [--out DIR]
#
# --profile debug packages the (stripped) debug build, for the test suite, which has it at hand;
# a release package is built from the release profile (the default). Prints the .deb's path.
# The maintainer field is $DEBFULLNAME <$DEBEMAIL> when set, else the commit's author.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile=release build=1 out="$root/target/debian"
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --out) out="$2"; shift 2 ;;
        *) sed -n '2,12p' "$0" >&2; exit 2 ;;
    esac
done
case "$profile" in
    release) cargo_flags=(--release) ;;
    debug) cargo_flags=() ;;
    *) echo "build-deb.sh: --profile is release or debug" >&2; exit 2 ;;
esac
for tool in dpkg-deb dpkg-shlibdeps fakeroot strip gzip help2man; do
    command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool is missing (apt-get install dpkg-dev fakeroot binutils help2man)" >&2; exit 1; }
done
if [ "$build" = 1 ]; then
    cargo build "${cargo_flags[@]}" --bin warren --bin brokerctl >&2
fi
bin="$root/target/$profile"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1"
arch="$(dpkg --print-architecture)"
# The maintainer: $DEBFULLNAME <$DEBEMAIL> (as dch takes it), else the author of the commit built.
maintainer="$(git log -1 --format='%an <%ae>' 2>/dev/null || true)"
if [ -n "${DEBEMAIL:-}" ]; then maintainer="${DEBFULLNAME:-Warren developers} <$DEBEMAIL>"; fi
[ -n "$maintainer" ] || { echo "build-deb.sh: set DEBEMAIL (and DEBFULLNAME) outside a git checkout" >&2; exit 1; }
src="$root/packaging/debian"
stage="$(mktemp -d "${TMPDIR:-/tmp}/warren-deb.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/pkg"

install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/sbin" "$pkg/usr/bin" "$pkg/etc/warren" \
    "$pkg/etc/warren/tls" "$pkg/lib/systemd/system" "$pkg/etc/apparmor.d" "$pkg/etc/logrotate.d" \
    "$pkg/usr/share/doc/warren" "$pkg/usr/share/man/man1" "$pkg/usr/share/man/man8" \
    "$pkg/usr/share/lintian/overrides"
install -m 0755 "$bin/warren" "$pkg/usr/sbin/warren"
install -m 0755 "$bin/brokerctl" "$pkg/usr/bin/brokerctl"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/sbin/warren" "$pkg/usr/bin/brokerctl"
ln -s ../bin/brokerctl "$pkg/usr/sbin/rabbitmqctl"
ln -s ../bin/brokerctl "$pkg/usr/sbin/rabbitmq-diagnostics"
install -m 0644 "$src/warren.toml" "$pkg/etc/warren/warren.toml"
install -m 0644 "$src/warren.service" "$pkg/lib/systemd/system/warren.service"
install -m 0644 "$src/usr.sbin.warren" "$pkg/etc/apparmor.d/usr.sbin.warren"
install -m 0644 "$src/warren.logrotate" "$pkg/etc/logrotate.d/warren"
install -D -m 0644 "$src/warren.tmpfiles" "$pkg/usr/lib/tmpfiles.d/warren.conf"
install -m 0644 "$src/copyright" "$src/README.Debian" "$pkg/usr/share/doc/warren/"
install -m 0644 docs/operations.md "$pkg/usr/share/doc/warren/operations.md"
gzip -9n "$pkg/usr/share/doc/warren/operations.md"
# Manual pages from the programs' own --help (dated by the commit, so a rebuild is the same file).
export SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
help2man --no-info --section 8 --name "TLS-only AMQP 0-9-1 message broker" "$bin/warren" \
    | gzip -9n >"$pkg/usr/share/man/man8/warren.8.gz"
help2man --no-info --section 1 --name "manage a Warren broker and its certificate authority" \
    "$bin/brokerctl" | gzip -9n >"$pkg/usr/share/man/man1/brokerctl.1.gz"
for alias in rabbitmqctl rabbitmq-diagnostics; do
    printf '.so man1/brokerctl.1\n' | gzip -9n >"$pkg/usr/share/man/man8/$alias.8.gz"
done
chmod 0644 "$pkg"/usr/share/man/man*/*.gz
# Not a Debian archive upload: there is no bug for the first changelog entry to close.
printf 'warren: initial-upload-closes-no-bugs\n' >"$pkg/usr/share/lintian/overrides/warren"
chmod 0644 "$pkg/usr/share/lintian/overrides/warren"
date_r="$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
printf 'warren (%s) unstable; urgency=medium\n\n  * Package built from commit %s.\n\n -- %s  %s\n' \
    "$version" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$maintainer" "$date_r" \
    | gzip -9n >"$pkg/usr/share/doc/warren/changelog.Debian.gz"
chmod 0644 "$pkg/usr/share/doc/warren/changelog.Debian.gz"
for script in postinst prerm postrm; do
    install -m 0755 "$src/$script" "$pkg/DEBIAN/$script"
done
(cd "$pkg" && find etc -type f -printf '/%p\n' | sort) >"$pkg/DEBIAN/conffiles"

# Library dependencies the way dh_shlibdeps finds them (it wants a debian/control to sit beside).
mkdir -p "$stage/shlibs/debian"
printf 'Source: warren\n\nPackage: warren\nArchitecture: any\n' >"$stage/shlibs/debian/control"
shlibs="$(cd "$stage/shlibs" && dpkg-shlibdeps -O "$pkg/usr/sbin/warren" "$pkg/usr/bin/brokerctl" \
    | sed -n 's/^shlibs:Depends=//p')"
size="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@SIZE@|$size|" -e "s|@SHLIBS@|$shlibs|" \
    -e "s|@MAINTAINER@|$maintainer|" "$src/control.in" >"$pkg/DEBIAN/control"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$pkg/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/warren_${version}_${arch}.deb"
fakeroot dpkg-deb --build --root-owner-group -Zxz "$pkg" "$deb" >&2
echo "$deb"
