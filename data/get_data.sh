#!/usr/bin/env bash
# data/get_data.sh (used by `make data`): puts tiny Shakespeare at data/tinyshakespeare.txt.
# Copied from ../shared/data/ when that file is there, otherwise downloaded with curl or wget;
# either way checked against its sha256 before it takes its place. Never committed (.gitignore).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/tinyshakespeare.txt"
shared="$(cd "$here/../.." && pwd)/shared/data/tinyshakespeare.txt"
url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
sha="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

verified() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha" ]; }
by_hand() {
    echo "get_data.sh: $1" >&2
    echo "  get the file by hand: download $url" >&2
    echo "  save it as $dest (sha256 $sha), then run make data again" >&2
    rm -f "$dest.tmp"
    exit 1
}

if verified "$dest"; then echo "data/tinyshakespeare.txt: present and verified"; exit 0; fi
if [ -f "$shared" ]; then
    cp "$shared" "$dest.tmp"
    verified "$dest.tmp" || by_hand "$shared does not have the expected sha256"
    from="$shared"
else
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 2 --connect-timeout 20 -o "$dest.tmp" "$url" || by_hand "download with curl failed"
    elif command -v wget >/dev/null 2>&1; then
        wget -q --tries=2 --timeout=20 -O "$dest.tmp" "$url" || by_hand "download with wget failed"
    else
        by_hand "neither curl nor wget is installed"
    fi
    verified "$dest.tmp" || by_hand "the downloaded file does not have the expected sha256"
    from="$url"
fi
chmod 644 "$dest.tmp"
mv "$dest.tmp" "$dest"
echo "data/tinyshakespeare.txt: $(wc -c < "$dest") bytes from $from, sha256 verified"
