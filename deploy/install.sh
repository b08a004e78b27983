#!/usr/bin/env bash
# Install, upgrade or remove GIA Gateway as a systemd service on Debian / Raspberry Pi OS (arm64, amd64).
#
#   sudo deploy/install.sh                      install or upgrade from the checkout this script sits in
#   sudo deploy/install.sh --from FILE.whl      install or upgrade from a wheel or sdist
#   sudo deploy/install.sh --with-mosquitto     also install a hardened local Mosquitto broker
#   sudo deploy/install.sh --uninstall [--purge]
#
# Idempotent: running it again upgrades the program in place and keeps the configuration, the ledger,
# the signing keys and the secrets. Run with --help for every option.
set -euo pipefail

readonly PROG="gia-install"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

# Fixed layout (the unit file and the example config use the same paths).
readonly GIA_USER="gia"
readonly VENV_DIR="/opt/gia/venv"
readonly CONF_DIR="/etc/gia"
readonly SECRETS_DIR="/etc/gia/secrets"
readonly DATA_DIR="/var/lib/gia"
readonly UNIT_PATH="/etc/systemd/system/gia.service"
readonly JOURNALD_DROPIN="/etc/systemd/journald.conf.d/60-gia.conf"
readonly MOSQ_CONF="/etc/mosquitto/conf.d/gia.conf"
readonly MOSQ_ACL="/etc/mosquitto/gia.acl"
readonly MOSQ_PASSWD="/etc/mosquitto/gia.passwd"

ROOT="/"
SOURCE=""
EXTRAS=""
ACTION="install"
PURGE=0
WITH_MOSQUITTO=0
USE_APT=1
MAKE_VENV=1
START=1
JOURNALD_LIMIT=1
CONFIG_CREATED=0
PREFIX_ARGS=()

usage() {
    cat <<EOF
Usage: install.sh [OPTIONS]

Installs GIA Gateway: system user '$GIA_USER' (group dialout for serial adapters), a venv in $VENV_DIR,
config $CONF_DIR/gia.yaml (from the example; an existing one is never overwritten), secrets in
$SECRETS_DIR (generated API tokens: there is no default password), data in $DATA_DIR and the
hardened unit gia.service. Running it again upgrades in place and keeps config, ledger and keys.

Options:
  --from PATH          install the package from this wheel, sdist or source directory
                       (default: the checkout this script sits in)
  --extras LIST        pip extras to install as well: forecast, flex (from requirements-extras.lock)
  --with-mosquitto     install Mosquitto with a hardened local config (no anonymous access,
                       generated password in $SECRETS_DIR/mqtt-password)
  --no-start           install and enable the service but do not (re)start it
  --no-apt             never call apt-get (fail instead when python3-venv or mosquitto is missing)
  --no-venv            do not create or upgrade the venv (the package is installed some other way)
  --no-journald-limit  do not install the journald size limit ($JOURNALD_DROPIN)
  --root DIR           install into DIR instead of / (image building, tests); implies --no-apt
                       and never touches a running systemd
  --uninstall          remove the service, the venv and the user; keep $CONF_DIR and $DATA_DIR
  --purge              with --uninstall: also delete $CONF_DIR, $DATA_DIR (ledger, signing keys!)
                       and the Mosquitto config written by --with-mosquitto
  -h, --help           this text

Dependencies come only from $SCRIPT_DIR/requirements.lock (pinned, every file's SHA-256 checked).
pip honours its usual environment, e.g. PIP_INDEX_URL, or PIP_NO_INDEX=1 with PIP_FIND_LINKS=DIR
for an offline install from a directory of wheels.
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

# A path inside the target root.
r() {
    if [[ "$ROOT" == "/" ]]; then
        printf '%s' "$1"
    else
        printf '%s%s' "${ROOT%/}" "$1"
    fi
}

parse_args() {
    while (($#)); do
        case "$1" in
            --from)
                (($# >= 2)) || die "--from needs a path"
                SOURCE="$2"
                shift
                ;;
            --extras)
                (($# >= 2)) || die "--extras needs a list, e.g. --extras forecast"
                EXTRAS="$2"
                shift
                ;;
            --root)
                (($# >= 2)) || die "--root needs a directory"
                ROOT="$2"
                shift
                ;;
            --with-mosquitto) WITH_MOSQUITTO=1 ;;
            --no-start) START=0 ;;
            --no-apt) USE_APT=0 ;;
            --no-venv) MAKE_VENV=0 ;;
            --no-journald-limit) JOURNALD_LIMIT=0 ;;
            --uninstall) ACTION="uninstall" ;;
            --purge) PURGE=1 ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) die "unknown option '$1' (see --help)" ;;
        esac
        shift
    done
    if ((PURGE)) && [[ "$ACTION" != "uninstall" ]]; then
        die "--purge only goes with --uninstall"
    fi
    if [[ "$ROOT" != "/" ]]; then
        [[ -d "$ROOT" ]] || die "--root $ROOT: no such directory"
        ROOT="$(cd "$ROOT" && pwd)"
        USE_APT=0
    fi
}

# systemd manages services only when it is PID 1 of the target system (not in a chroot, a container
# build or an image being prepared under --root).
systemd_running() {
    [[ "$ROOT" == "/" ]] && [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

# --- users and ids (read from the target root's files, so --root works without a chroot) ----------
user_exists() { grep -q "^$1:" "$(r /etc/passwd)" 2>/dev/null; }
group_exists() { grep -q "^$1:" "$(r /etc/group)" 2>/dev/null; }
uid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$(r /etc/passwd)"; }
gid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$(r /etc/group)"; }
in_group() { awk -F: -v g="$1" -v u="$2" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) f = 1 } END { exit !f }' "$(r /etc/group)"; }

# useradd/usermod/userdel work on ROOT's account files with --prefix.
prefix_args() {
    PREFIX_ARGS=()
    if [[ "$ROOT" != "/" ]]; then
        PREFIX_ARGS=(--prefix "$ROOT")
    fi
}

ensure_user() {
    local -a prefix
    prefix_args
    prefix=("${PREFIX_ARGS[@]}")
    [[ -f "$(r /etc/passwd)" ]] || die "$(r /etc/passwd) is missing: --root must point at a system root"
    if ! group_exists dialout; then
        groupadd "${prefix[@]}" --system dialout
    fi
    if user_exists "$GIA_USER"; then
        if ! in_group dialout "$GIA_USER"; then
            usermod "${prefix[@]}" -a -G dialout "$GIA_USER"
            say "added user $GIA_USER to group dialout"
        fi
    else
        useradd "${prefix[@]}" --system --user-group --groups dialout --home-dir "$DATA_DIR" \
            --no-create-home --shell /usr/sbin/nologin --comment "GIA Gateway agent" "$GIA_USER"
        say "created system user $GIA_USER (groups: $GIA_USER, dialout)"
    fi
}

# install_dir PATH MODE OWNER GROUP: create or fix a directory (ownership by numeric id: works in --root).
install_dir() {
    local path="$1" mode="$2" owner="$3" group="$4"
    mkdir -p "$(r "$path")"
    chown "$(uid_of "$owner"):$(gid_of "$group")" "$(r "$path")"
    chmod "$mode" "$(r "$path")"
}

# install_file SRC DEST MODE OWNER GROUP: copy, replacing DEST (for files this installer owns).
install_file() {
    local src="$1" dest="$2" mode="$3" owner="$4" group="$5"
    mkdir -p "$(dirname "$(r "$dest")")"
    install -m "$mode" -o "$(uid_of "$owner")" -g "$(gid_of "$group")" "$src" "$(r "$dest")"
}

random_token() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import secrets; print(secrets.token_hex(32))'
    elif command -v openssl >/dev/null 2>&1; then
        openssl rand -hex 32
    else
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
        echo
    fi
}

# ensure_secret NAME: generate $SECRETS_DIR/NAME once (0640 root:gia); never overwrite.
ensure_secret() {
    local path
    path="$(r "$SECRETS_DIR/$1")"
    if [[ -s "$path" ]]; then
        chown "0:$(gid_of "$GIA_USER")" "$path"
        chmod 0640 "$path"
        return 1
    fi
    (
        umask 077
        random_token >"$path"
    )
    chown "0:$(gid_of "$GIA_USER")" "$path"
    chmod 0640 "$path"
    say "generated $SECRETS_DIR/$1"
    return 0
}

# --- steps ------------------------------------------------------------------------------------------
need_root() {
    if [[ "$(id -u)" != "0" ]]; then
        die "run as root, e.g. sudo $0 $*"
    fi
}

apt_install() {
    ((USE_APT)) || die "missing Debian packages: $*; install them (apt-get install $*) or drop --no-apt"
    command -v apt-get >/dev/null 2>&1 || die "missing packages $* and no apt-get: install them by hand"
    say "installing Debian packages: $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

deb_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

ensure_python() {
    if ((MAKE_VENV)) && [[ "$ROOT" == "/" ]]; then
        local missing=()
        command -v python3 >/dev/null 2>&1 || missing+=(python3)
        python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
        if ((${#missing[@]})); then
            apt_install "${missing[@]}"
        fi
        # The PDF summary in Latvian needs a Unicode font (ā, š, ž...); without it letters lose their marks.
        if [[ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]]; then
            if ((USE_APT)) && command -v apt-get >/dev/null 2>&1; then
                apt_install fonts-dejavu-core
            else
                say "note: fonts-dejavu-core is not installed: Latvian PDF summaries lose their letters' marks"
            fi
        fi
    fi
    if ((MAKE_VENV)); then
        command -v python3 >/dev/null 2>&1 || die "python3 is missing"
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
            die "Python 3.11 or newer is needed (Debian 12 bookworm / Raspberry Pi OS 12 have it); found $(python3 -V 2>&1)"
    fi
}

resolve_source() {
    if [[ -z "$SOURCE" ]]; then
        SOURCE="$(cd "$SCRIPT_DIR/.." && pwd)"
        [[ -f "$SOURCE/pyproject.toml" ]] ||
            die "no --from given and $SOURCE is not a GIA Gateway checkout (no pyproject.toml)"
    fi
    [[ -e "$SOURCE" ]] || die "--from $SOURCE: no such file or directory"
    SOURCE="$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")"
}

# The lock file for the chosen extras: requirements.lock (the agent), requirements-extras.lock (the agent
# with forecast and flex). Both pin every package for Python 3.11 with the SHA-256 of each file on the index.
lock_file() {
    local extra
    if [[ -z "$EXTRAS" ]]; then
        printf '%s' "$SCRIPT_DIR/requirements.lock"
        return
    fi
    for extra in ${EXTRAS//,/ }; do
        [[ "$extra" == "forecast" || "$extra" == "flex" ]] ||
            die "--extras $EXTRAS: no lock file covers '$extra' (locked: forecast, flex)"
    done
    printf '%s' "$SCRIPT_DIR/requirements-extras.lock"
}

install_venv() {
    local venv pip build lock
    venv="$(r "$VENV_DIR")"
    if [[ -x "$venv/bin/python" ]] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        warn "the venv in $VENV_DIR is broken (Python upgraded?): recreating it"
        rm -rf "$venv"
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        say "creating the venv in $VENV_DIR"
        mkdir -p "$(dirname "$venv")"
        python3 -m venv "$venv"
    fi
    pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)
    build="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "rm -rf '$build'" EXIT
    if [[ -d "$SOURCE" ]]; then
        say "building the package from $SOURCE"
        "${pip[@]}" wheel -q --no-deps --wheel-dir "$build" "$SOURCE" >/dev/null
        SOURCE="$(find "$build" -maxdepth 1 -name 'gia_gateway-*.whl' -print -quit)"
        [[ -n "$SOURCE" ]] || die "building a wheel from the checkout produced no gia_gateway-*.whl"
    fi
    lock="$(lock_file)"
    # Dependencies only from the lock file: exact versions, each file checked against its SHA-256, so a
    # compromised or typo-squatted release on the index (or a tampered wheelhouse) is refused.
    say "installing the dependencies from $(basename "$lock") (pinned, hash-checked) into $VENV_DIR"
    "${pip[@]}" install -q --require-hashes -r "$lock"
    # The package itself (built here or given with --from), without letting it pull anything unlocked;
    # same version number but new code (a checkout between releases) is replaced too.
    say "installing $(basename "$SOURCE")"
    "${pip[@]}" install -q --no-deps --force-reinstall "$SOURCE"
    "${pip[@]}" check >/dev/null || die "the lock file $lock does not satisfy $(basename "$SOURCE"): $("${pip[@]}" check)"
    "$venv/bin/gia" --help >/dev/null || die "the installed 'gia' does not start: see the pip output above"
    say "installed: $("$venv/bin/python" -c 'from importlib.metadata import version; print("gia-gateway", version("gia-gateway"))')"
}

install_config() {
    local example="$SCRIPT_DIR/gia.example.yaml" conf gid
    gid="$(gid_of "$GIA_USER")"
    install_dir "$CONF_DIR" 0755 root root
    install_dir "$SECRETS_DIR" 0750 root "$GIA_USER"
    # The newest example, for reference after upgrades.
    install_file "$example" "$CONF_DIR/gia.example.yaml" 0644 root root
    conf="$(r "$CONF_DIR/gia.yaml")"
    if [[ -e "$conf" ]]; then
        say "kept the existing $CONF_DIR/gia.yaml"
    else
        install -m 0640 -o 0 -g "$gid" "$example" "$conf"
        CONFIG_CREATED=1
        say "created $CONF_DIR/gia.yaml from the example: edit the site and devices"
    fi
    chown "0:$gid" "$conf"
    chmod 0640 "$conf"
    if [[ ! -e "$(r "$CONF_DIR/gia.env")" ]]; then
        install -m 0640 -o 0 -g "$gid" "$SCRIPT_DIR/systemd/gia.env" "$(r "$CONF_DIR/gia.env")"
    fi
    # API tokens the example config refers to: random, so no installation shares a default password.
    ensure_secret viewer-token || true
    ensure_secret certifier-token || true
}

install_data_dir() {
    install_dir "$DATA_DIR" 0750 "$GIA_USER" "$GIA_USER"
    # After --uninstall and a new install the user may have a new uid: give the data back to it.
    chown -R "$(uid_of "$GIA_USER"):$(gid_of "$GIA_USER")" "$(r "$DATA_DIR")"
}

install_units() {
    install_file "$SCRIPT_DIR/systemd/gia.service" "$UNIT_PATH" 0644 root root
    say "installed $UNIT_PATH"
    if ((JOURNALD_LIMIT)); then
        local before=""
        [[ -f "$(r "$JOURNALD_DROPIN")" ]] && before="$(cat "$(r "$JOURNALD_DROPIN")")"
        install_file "$SCRIPT_DIR/systemd/journald-gia.conf" "$JOURNALD_DROPIN" 0644 root root
        if [[ "$before" != "$(cat "$(r "$JOURNALD_DROPIN")")" ]] && systemd_running; then
            systemctl restart systemd-journald || warn "could not restart systemd-journald"
        fi
    fi
}

# set_broker_password FILE: put user gia's hashed password into the Mosquitto password FILE.
# Never `mosquitto_passwd -b FILE user PASSWORD`: a command line is readable by every local user
# (/proc/PID/cmdline, ps). The plain line is written by bash builtins into a private temp file, which
# `mosquitto_passwd -U` hashes in place; the hashed line then replaces gia's line in FILE.
set_broker_password() {
    local file="$1" tmp secret
    tmp="$(mktemp -d)"
    secret="$(<"$(r "$SECRETS_DIR/mqtt-password")")"
    (
        umask 077
        printf '%s:%s\n' "$GIA_USER" "$secret" >"$tmp/plain"
    )
    secret=""
    if ! mosquitto_passwd -U "$tmp/plain" >/dev/null; then
        rm -rf "$tmp"
        die "mosquitto_passwd -U could not hash the broker password"
    fi
    touch "$file"
    {
        grep -v "^$GIA_USER:" "$file" || true
        cat "$tmp/plain"
    } >"$tmp/merged"
    cat "$tmp/merged" >"$file"
    rm -rf "$tmp"
}

install_mosquitto() {
    if [[ "$ROOT" == "/" ]] && ! deb_installed mosquitto; then
        apt_install mosquitto
    fi
    group_exists mosquitto || die "group 'mosquitto' is missing: is the mosquitto package installed in $ROOT?"
    local mgid pw created=0
    mgid="$(gid_of mosquitto)"
    install_file "$SCRIPT_DIR/mosquitto/gia.conf" "$MOSQ_CONF" 0644 root root
    if [[ ! -e "$(r "$MOSQ_ACL")" ]]; then
        install -m 0640 -o 0 -g "$mgid" "$SCRIPT_DIR/mosquitto/gia.acl" "$(r "$MOSQ_ACL")"
    fi
    ensure_secret mqtt-password && created=1
    pw="$(r "$MOSQ_PASSWD")"
    if ((created)) || ! grep -q "^$GIA_USER:" "$pw" 2>/dev/null; then
        command -v mosquitto_passwd >/dev/null 2>&1 || die "mosquitto_passwd is missing (package mosquitto)"
        set_broker_password "$pw"
        say "set the broker password of user $GIA_USER (in $SECRETS_DIR/mqtt-password)"
    fi
    chown "0:$mgid" "$pw" "$(r "$MOSQ_ACL")"
    chmod 0640 "$pw" "$(r "$MOSQ_ACL")"
    local snippet
    snippet="$(printf '%s\n' \
        "mqtt:                            # the local broker installed by install.sh --with-mosquitto" \
        "  url: mqtt://127.0.0.1:1883" \
        "  username: $GIA_USER" \
        "  password_file: $SECRETS_DIR/mqtt-password")"
    if ((CONFIG_CREATED)); then
        printf '\n%s\n' "$snippet" >>"$(r "$CONF_DIR/gia.yaml")"
        say "configured the agent to publish to the local broker"
    elif ! grep -q '^mqtt:' "$(r "$CONF_DIR/gia.yaml")"; then
        say "to publish to the local broker, add to $CONF_DIR/gia.yaml:"
        printf '%s\n' "$snippet"
    fi
    if systemd_running; then
        systemctl enable mosquitto >/dev/null 2>&1 || true
        systemctl restart mosquitto || warn "mosquitto did not restart: journalctl -u mosquitto"
    fi
}

start_service() {
    if ! systemd_running; then
        say "systemd is not running here (chroot, container or --root): installed the unit but did not"
        say "enable or start it. On the running system: systemctl daemon-reload && systemctl enable --now gia"
        return
    fi
    systemctl daemon-reload
    systemctl enable gia.service >/dev/null 2>&1
    if ((!START)); then
        say "enabled gia.service (not started: --no-start)"
        return
    fi
    if ((CONFIG_CREATED)); then
        say "enabled gia.service; not started yet because $CONF_DIR/gia.yaml is still the example."
        say "edit it, check it with: sudo -u $GIA_USER $VENV_DIR/bin/gia check-config --config $CONF_DIR/gia.yaml"
        say "then start: systemctl start gia"
        return
    fi
    if ((MAKE_VENV)) && ! runuser -u "$GIA_USER" -- "$VENV_DIR/bin/gia" check-config --config "$CONF_DIR/gia.yaml"; then
        warn "$CONF_DIR/gia.yaml has the problems above: fix them, then systemctl restart gia"
        return
    fi
    systemctl restart gia.service
    say "gia.service (re)started: systemctl status gia; journalctl -u gia -f"
}

# Every file the installer copies, checked before anything changes (a lone install.sh stops here).
check_assets() {
    local f
    for f in gia.example.yaml requirements.lock requirements-extras.lock systemd/gia.service systemd/gia.env systemd/journald-gia.conf \
        mosquitto/gia.conf mosquitto/gia.acl; do
        [[ -f "$SCRIPT_DIR/$f" ]] ||
            die "$SCRIPT_DIR/$f is missing: run install.sh from a complete checkout or release"
    done
}

do_install() {
    need_root "$@"
    check_assets
    ensure_python
    ensure_user
    if ((MAKE_VENV)); then
        resolve_source
        install_venv
    fi
    install_config
    install_data_dir
    install_units
    if ((WITH_MOSQUITTO)); then
        install_mosquitto
    fi
    start_service
    say "done. Config: $CONF_DIR/gia.yaml; secrets: $SECRETS_DIR; data: $DATA_DIR"
    say "the web page token is in $SECRETS_DIR/viewer-token (open http://127.0.0.1:8080/?token=...)"
}

# disown_freed_ids UID GID: what the removed user or group owned and --uninstall keeps (config, secrets,
# ledger, keys) goes to root. Left owned by a freed id, the next account that gets that uid or gid (any
# package's system user) could read the secrets and rewrite the ledger. A new install gives them back.
disown_freed_ids() {
    local uid="$1" gid="${2:-}" dir
    for dir in "$CONF_DIR" "$DATA_DIR" /etc/mosquitto; do
        [[ -e "$(r "$dir")" ]] || continue
        find "$(r "$dir")" -xdev -uid "$uid" -exec chown -h 0 {} +
        if [[ -n "$gid" ]] && ! grep -q "^[^:]*:[^:]*:$gid:" "$(r /etc/group)"; then
            find "$(r "$dir")" -xdev -gid "$gid" -exec chgrp -h 0 {} +
        fi
    done
    say "gave what uid $uid${gid:+ and gid $gid} owned in $CONF_DIR and $DATA_DIR to root"
}

do_uninstall() {
    need_root "$@"
    if systemd_running; then
        systemctl disable --now gia.service >/dev/null 2>&1 || true
    fi
    rm -f "$(r "$UNIT_PATH")" "$(r "$JOURNALD_DROPIN")"
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "removed gia.service"
    rm -rf "$(r /opt/gia)"
    say "removed /opt/gia"
    if user_exists "$GIA_USER"; then
        local -a prefix
        local uid gid
        uid="$(uid_of "$GIA_USER")"
        gid="$(gid_of "$GIA_USER")"
        prefix_args
        prefix=("${PREFIX_ARGS[@]}")
        userdel "${prefix[@]}" "$GIA_USER"
        say "removed user $GIA_USER"
        disown_freed_ids "$uid" "$gid"
    fi
    if ((PURGE)); then
        rm -rf "$(r "$CONF_DIR")" "$(r "$DATA_DIR")" "$(r /etc/systemd/system/gia.service.d)"
        rm -f "$(r "$MOSQ_CONF")" "$(r "$MOSQ_ACL")" "$(r "$MOSQ_PASSWD")"
        say "purged $CONF_DIR, $DATA_DIR and the GIA Mosquitto config (the mosquitto package stays)"
        if systemd_running && deb_installed mosquitto; then
            systemctl try-restart mosquitto || true
        fi
    else
        say "kept $CONF_DIR (config, secrets) and $DATA_DIR (ledger, keys); --purge deletes them"
    fi
}

main() {
    parse_args "$@"
    case "$ACTION" in
        install) do_install "$@" ;;
        uninstall) do_uninstall "$@" ;;
        *) die "unknown action $ACTION" ;;
    esac
}

main "$@"
