#!/usr/bin/env bash
# Build the Debian package of drl: target/debian/drl_VERSION_ARCH.deb
#
#   scripts/build-deb.sh                 release build (what ships)
#   scripts/build-deb.sh --profile dev   package the debug build (tests: fast)
#   scripts/build-deb.sh --prebuilt      do not run cargo build (the binary is already there)
#   scripts/build-deb.sh --check         also run lintian when it is installed
#
# Generates the man pages and completions from the binary itself (`drl gen`), then `cargo deb`
# (installed from crates.io when missing) packs the binary, the systemd unit, the pages, the
# completions and the example config (Cargo.toml [package.metadata.deb]). Prints the .deb path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(repo_root)
cd "$root"
# The cargo-deb this script is tested with (its asset and profile handling changes between
# majors).
CARGO_DEB_VERSION=${CARGO_DEB_VERSION:-3.8.0}

profile=release check=0 prebuilt=0
while [ $# -gt 0 ]; do
    case $1 in
    --profile) profile=$2; shift 2 ;;
    --check) check=1; shift ;;
    --prebuilt) prebuilt=1; shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
    esac
done
case $profile in
release) bin=target/release/drl ;;
dev) bin=target/debug/drl ;;
*) die "--profile release|dev" ;;
esac

need_cmd dpkg-deb dpkg
need_cmd gzip gzip
if ! cargo deb --version >/dev/null 2>&1; then
    log "cargo-deb is missing: installing it from crates.io"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked >&2 || die "cargo install cargo-deb failed"
fi

if [ "$prebuilt" = 0 ]; then
    if [ "$profile" = release ]; then
        cargo build --release --bin drl >&2
    else
        cargo build --bin drl >&2
    fi
fi
[ -x "$bin" ] || die "$bin is missing (build it, or drop --prebuilt)"


assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" gen man "$assets/man" >/dev/null
gzip -9n "$assets"/man/*.1
"$bin" gen completions bash >"$assets/completions/drl"
"$bin" gen completions zsh >"$assets/completions/_drl"
"$bin" gen completions fish >"$assets/completions/drl.fish"

# The assets name target/release/drl; cargo-deb maps it to the chosen profile's directory.
args=(--no-build --profile "$profile")
[ "$profile" = dev ] && args+=(--fast)
deb=$(cargo deb "${args[@]}" 2>&1 | tee /dev/stderr | tail -n 1)
[ -f "$deb" ] || die "cargo deb did not produce a package (last line: $deb)"
if [ "$check" = 1 ]; then
    if command -v lintian >/dev/null; then
        lintian --tag-display-limit 0 "$deb" >&2 || warn "lintian reported problems (above)"
    else
        warn "lintian is not installed: skipped (apt-get install lintian)"
    fi
fi
echo "$deb"
