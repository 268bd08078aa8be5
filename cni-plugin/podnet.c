/*
 * podnet: the CNI plugin binary, native build.
 *
 * The same thin relay as cni-plugin/plugin.py (the portable build): it parses the network config
 * with jansson for the two keys it needs itself ("socket" and "cniVersion", top level only),
 * hands the invocation to podnetd's CNI relay socket and prints what the daemon answers. The
 * daemon validates and does the work. The relay protocol is in docs/cni-relay.md: length-prefixed
 * frames, one request and one answer per connection, every length bounded on both sides.
 * A Python interpreter alone takes ~6-14 ms to start here, more than the reference Go plugins
 * take for a whole ADD; this build starts in ~1 ms.
 * Both builds are run by the same tests (tests/test_cni_relay.py and the CNI tests).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/podnet/cni.sock"
#define LATEST "1.1.0"
#define MAGIC "PNR1"                  /* podnet relay protocol, version 1 */
#define MAX_ENV 4096                  /* per CNI_* value */
#define MAX_CONFIG (4u << 20)         /* the network config on stdin */
#define MAX_ANSWER (1u + (1u << 20))  /* exit code + stdout */

/* The CNI versions podnetd speaks (podnetd/cni.py SUPPORTED_VERSIONS; a test compares them). */
static const char *const SUPPORTED[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
#define N_SUPPORTED (sizeof SUPPORTED / sizeof *SUPPORTED)
#define MAX_DEPTH 64                  /* levels of arrays and objects, as podnetd (jansson: 2048) */
#define CONNECT_TIMEOUT_MS 2000       /* connect, send, the relay's greeting: down or wedged fails fast */
#define CALL_TIMEOUT_MS 60000         /* the answer, once the relay has accepted the request */
#define ERR_ENV 4
#define ERR_DECODE 6
#define ERR_CONFIG 7
#define ERR_TRY_AGAIN 11
#define ERR_UNAVAILABLE 50            /* STATUS: plugin not available */

static const char *const ENV_FIELDS[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"};
#define N_ENV (sizeof ENV_FIELDS / sizeof *ENV_FIELDS)

/* An error the plugin reports: the spec's code, msg and details. */
typedef struct {
    int code;
    char msg[256];
    char details[512];
} plugin_error;

static int set_error(plugin_error *e, int code, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int set_error(plugin_error *e, int code, const char *msg, const char *fmt, ...) {
    va_list ap;
    e->code = code;
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    va_start(ap, fmt);
    vsnprintf(e->details, sizeof e->details, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- output: the spec's error JSON and VERSION ----------------------------------------------- */

/* A JSON string of text that may have been cut inside a UTF-8 sequence (a parser's message
 * quoting the input, truncated): json_string refuses invalid UTF-8, so non-ASCII becomes '?'. */
static json_t *json_text(const char *text) {
    json_t *s = json_string(text);
    if (s) return s;
    char ascii[512];
    size_t i = 0;
    for (; text[i] && i + 1 < sizeof ascii; i++) ascii[i] = (unsigned char)text[i] < 0x80 ? text[i] : '?';
    ascii[i] = 0;
    return json_string(ascii);
}

static int print_error(const char *version, const plugin_error *e) {
    json_t *out = json_object();
    json_object_set_new(out, "cniVersion", json_string(version));
    json_object_set_new(out, "code", json_integer(e->code));
    json_object_set_new(out, "msg", json_text(e->msg));
    if (e->details[0]) {
        json_object_set_new(out, "details", json_text(e->details));
        fprintf(stderr, "podnet: %s: %s\n", e->msg, e->details);
    }
    json_dumpf(out, stdout, JSON_ENSURE_ASCII);
    fputc('\n', stdout);
    json_decref(out);
    return 1;
}

/* ---- input: stdin and the network config ----------------------------------------------------- */

/* Reads stdin up to MAX_CONFIG + 1 bytes (one more tells "too large" from "exactly the limit"). */
static int read_stdin(unsigned char **data, size_t *len, plugin_error *e) {
    size_t cap = 65536, n = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) return set_error(e, ERR_DECODE, "cannot read the network configuration", "out of memory");
    for (;;) {
        if (n == cap) {
            if (cap > MAX_CONFIG) break;  /* holds MAX_CONFIG + 1 bytes already */
            size_t grown = cap * 2 > MAX_CONFIG + 1 ? MAX_CONFIG + 1 : cap * 2;
            unsigned char *p = realloc(buf, grown);
            if (!p) { free(buf); return set_error(e, ERR_DECODE, "cannot read the network configuration", "out of memory"); }
            buf = p;
            cap = grown;
        }
        ssize_t got = read(0, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            free(buf);
            return set_error(e, ERR_DECODE, "cannot read the network configuration", "stdin: %s", strerror(errno));
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    *data = buf;
    *len = n;
    return 0;
}

/* Nesting depth of a parsed value; recursion bounded by jansson's own parse depth (2048). */
static int depth_of(json_t *value, int depth) {
    int deepest = depth;
    if (depth > MAX_DEPTH) return depth;
    if (json_is_object(value)) {
        const char *key;
        json_t *item;
        json_object_foreach(value, key, item) {
            if (json_is_object(item) || json_is_array(item)) {
                int d = depth_of(item, depth + 1);
                if (d > deepest) deepest = d;
                if (deepest > MAX_DEPTH) break;
            }
        }
    } else if (json_is_array(value)) {
        size_t i;
        json_t *item;
        json_array_foreach(value, i, item) {
            if (json_is_object(item) || json_is_array(item)) {
                int d = depth_of(item, depth + 1);
                if (d > deepest) deepest = d;
                if (deepest > MAX_DEPTH) break;
            }
        }
    }
    return deepest;
}

#define UNDECODABLE "cannot decode the network configuration"

/* The JSON type names podnetd's messages use (Python's). */
static const char *type_name(const json_t *value) {
    switch (json_typeof(value)) {
    case JSON_ARRAY: return "list";
    case JSON_STRING: return "str";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_TRUE: case JSON_FALSE: return "bool";
    case JSON_NULL: return "NoneType";
    default: return "dict";
    }
}

/* Whether the brackets of a text nest deeper than MAX_DEPTH, brackets inside strings not
 * counted: podnetd's check of the text (podnetd/cni.py), for a text jansson refused, so that a
 * broken document is "too deep" when its brackets are, as in podnetd. */
static int text_too_deep(const unsigned char *p, size_t n) {
    long depth = 0;
    int in_string = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (in_string) {
            if (c == '\\') i++;                 /* the escaped byte is not a quote */
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > MAX_DEPTH) return 1;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return 0;
}

static void too_deep(plugin_error *e) {
    set_error(e, ERR_DECODE, "the network configuration is nested too deeply",
              "podnet accepts at most %d levels of arrays and objects", MAX_DEPTH);
}

/* The network config as a JSON object, or an error with code 6. The same documents as podnetd
 * (podnetd/cni.py) and the Python build accept: duplicate keys are refused (readers differ on
 * which one wins), and so is what jansson itself refuses (NaN, U+0000, integers beyond int64). */
static json_t *parse_config(const unsigned char *data, size_t len, plugin_error *e) {
    if (len > MAX_CONFIG) {
        set_error(e, ERR_DECODE, "the network configuration is too large",
                  "more than %u bytes; podnet accepts at most %u bytes", MAX_CONFIG, MAX_CONFIG);
        return NULL;
    }
    json_error_t err;
    json_t *config = json_loadb((const char *)data, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
    if (!config) {
        if (json_error_code(&err) == json_error_stack_overflow || text_too_deep(data, len))
            too_deep(e);
        else
            set_error(e, ERR_DECODE, UNDECODABLE, "%s at character %d", err.text, err.position);
        return NULL;
    }
    if (depth_of(config, 1) > MAX_DEPTH) {
        json_decref(config);
        too_deep(e);
        return NULL;
    }
    if (!json_is_object(config)) {
        set_error(e, ERR_DECODE, "the network configuration must be a JSON object", "got a JSON %s",
                  type_name(config));
        json_decref(config);
        return NULL;
    }
    return config;
}

/* The top-level cniVersion when we support it (errors are written in it), else the latest. */
static const char *requested_version(json_t *config) {
    const char *version = json_string_value(json_object_get(config, "cniVersion"));
    for (size_t i = 0; version && i < N_SUPPORTED; i++)
        if (!strcmp(version, SUPPORTED[i])) return SUPPORTED[i];
    return LATEST;
}

/* The top-level "socket" (podnetd's CNI relay) or the default; nested keys are never looked at. */
static int relay_socket(json_t *config, struct sockaddr_un *addr, plugin_error *e) {
    json_t *value = json_object_get(config, "socket");
    const char *path = DEFAULT_SOCKET;
    size_t len = strlen(DEFAULT_SOCKET);
    if (value && !json_is_string(value))
        return set_error(e, ERR_CONFIG, "'socket' must be a string path", "%s", "");
    if (value && json_string_length(value)) {
        path = json_string_value(value);
        len = json_string_length(value);  /* jansson refuses U+0000, so len == strlen(path) */
    }
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    if (path[0] != '/' || len >= sizeof addr->sun_path) {
        /* shown whole or not at all: a cut could split a UTF-8 sequence */
        char shown[48];
        snprintf(shown, sizeof shown, "(%zu bytes)", len);
        return set_error(e, ERR_CONFIG, "'socket' is not a usable socket path",
                         "%s: an absolute path of at most %zu bytes", len <= 200 ? path : shown,
                         sizeof addr->sun_path - 1);
    }
    memcpy(addr->sun_path, path, len);
    return 0;
}

/* ---- the relay protocol ---------------------------------------------------------------------- */

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* MAGIC, u32 length, then CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and the config,
 * each as u32 length + bytes. Lengths are checked before: the total fits in 32 bits. */
static unsigned char *encode_request(const char *env[N_ENV], const unsigned char *config,
                                     size_t config_len, size_t *out_len) {
    size_t body = 4 + config_len;
    for (size_t i = 0; i < N_ENV; i++) body += 4 + strlen(env[i]);
    unsigned char *out = malloc(8 + body);
    if (!out) return NULL;
    memcpy(out, MAGIC, 4);
    put_u32(out + 4, (uint32_t)body);
    size_t pos = 8;
    for (size_t i = 0; i < N_ENV; i++) {
        size_t n = strlen(env[i]);
        put_u32(out + pos, (uint32_t)n);
        memcpy(out + pos + 4, env[i], n);
        pos += 4 + n;
    }
    put_u32(out + pos, (uint32_t)config_len);
    if (config_len) memcpy(out + pos + 4, config, config_len);
    *out_len = 8 + body;
    return out;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Waits for fd to be ready for `events` until deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) return 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        int r = poll(&pfd, 1, left > 1000000 ? 1000000 : (int)left);
        if (r < 0 && errno == EINTR) continue;
        return r < 0 ? -1 : r > 0;
    }
}

/* What went wrong on the relay connection ("try again later"), for the error's details. */
typedef struct {
    char text[400];
} relay_failure;

static int relay_fail(relay_failure *f, const char *path, const char *what) {
    snprintf(f->text, sizeof f->text, "podnetd's CNI relay at %.200s: %s", path, what);
    return -1;
}

static int relay_timeout(relay_failure *f, const char *path, const char *waiting_for) {
    snprintf(f->text, sizeof f->text, "podnetd's CNI relay at %.200s did not answer in time (%s)",
             path, waiting_for);
    return -1;
}

static int send_all(int fd, const unsigned char *p, size_t n, long long deadline, relay_failure *f,
                    const char *path) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0) return relay_fail(f, path, strerror(errno));
            if (r == 0) return relay_timeout(f, path, "sending the request");
            continue;
        }
        if (w < 0) return relay_fail(f, path, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int recv_exact(int fd, unsigned char *p, size_t n, long long deadline, relay_failure *f,
                      const char *path, const char *what) {
    size_t want = n;
    while (n) {
        ssize_t got = recv(fd, p, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(fd, POLLIN, deadline);
            if (r < 0) return relay_fail(f, path, strerror(errno));
            if (r == 0) {
                char waiting[96];
                snprintf(waiting, sizeof waiting, "waiting for %s", what);
                return relay_timeout(f, path, waiting);
            }
            continue;
        }
        if (got < 0) return relay_fail(f, path, strerror(errno));
        if (got == 0) {
            char msg[160];
            snprintf(msg, sizeof msg, "podnetd closed the connection before %s (%zu of %zu bytes)",
                     what, want - n, want);
            return relay_fail(f, path, msg);
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

enum { CALL_OK = 0, CALL_UNAVAILABLE = -1, CALL_NOT_A_RELAY = -2 };

/* One invocation on the relay; on CALL_OK *answer holds exit code + stdout (freed by the caller). */
static int call(const struct sockaddr_un *addr, const unsigned char *request, size_t request_len,
                unsigned char **answer, size_t *answer_len, unsigned char greeting[4],
                relay_failure *f) {
    const char *path = addr->sun_path;
    int result = CALL_UNAVAILABLE;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return relay_fail(f, path, strerror(errno));
    /* a unix connect waits for room in the daemon's backlog: bounded by the send timeout */
    struct timeval tv = {.tv_sec = CONNECT_TIMEOUT_MS / 1000, .tv_usec = CONNECT_TIMEOUT_MS % 1000 * 1000};
    long long deadline = now_ms() + CONNECT_TIMEOUT_MS;
    unsigned char header[4];
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0
        || connect(fd, (const struct sockaddr *)addr, sizeof *addr) < 0) {
        relay_fail(f, path, strerror(errno));
        goto out;
    }
    if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
        relay_fail(f, path, strerror(errno));
        goto out;
    }
    if (send_all(fd, request, request_len, deadline, f, path) < 0
        || recv_exact(fd, greeting, 4, deadline, f, path, "the relay's greeting") < 0)
        goto out;
    if (memcmp(greeting, MAGIC, 4)) {
        result = CALL_NOT_A_RELAY;
        goto out;
    }
    deadline = now_ms() + CALL_TIMEOUT_MS;
    if (recv_exact(fd, header, 4, deadline, f, path, "the answer") < 0) goto out;
    uint32_t len = get_u32(header);
    if (len < 1 || len > MAX_ANSWER) {
        char msg[96];
        snprintf(msg, sizeof msg, "malformed answer: length %u is not 1-%u", len, MAX_ANSWER);
        relay_fail(f, path, msg);
        goto out;
    }
    *answer = malloc(len);
    if (!*answer) {
        relay_fail(f, path, "out of memory");
        goto out;
    }
    if (recv_exact(fd, *answer, len, deadline, f, path, "the whole answer") < 0) {
        free(*answer);
        *answer = NULL;
        goto out;
    }
    *answer_len = len;
    result = CALL_OK;
out:
    close(fd);
    return result;
}

/* ---- the plugin ------------------------------------------------------------------------------ */

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (command && !strcmp(command, "VERSION")) {
        printf("{\"cniVersion\": \"" LATEST "\", \"supportedVersions\": [");
        for (size_t i = 0; i < N_SUPPORTED; i++)
            printf("%s\"%s\"", i ? ", " : "", SUPPORTED[i]);
        printf("]}\n");
        return 0;
    }
    plugin_error e = {0};
    const char *version = LATEST;
    unsigned char *data = NULL, *request = NULL, *answer = NULL;
    size_t len = 0, request_len = 0, answer_len = 0;
    json_t *config = NULL;
    int exit_code = 1;

    if (read_stdin(&data, &len, &e) < 0 || !(config = parse_config(data, len, &e))) goto fail;
    version = requested_version(config);
    if (!command || !*command) {
        set_error(&e, ERR_ENV, "CNI_COMMAND is not set", "%s", "");
        goto fail;
    }
    struct sockaddr_un addr;
    if (relay_socket(config, &addr, &e) < 0) goto fail;
    const char *env[N_ENV];
    for (size_t i = 0; i < N_ENV; i++) {
        env[i] = getenv(ENV_FIELDS[i]);
        if (!env[i]) env[i] = "";
        if (strlen(env[i]) > MAX_ENV) {
            char msg[64];
            snprintf(msg, sizeof msg, "%s is longer than %d bytes", ENV_FIELDS[i], MAX_ENV);
            set_error(&e, ERR_ENV, msg, "%s", "");
            goto fail;
        }
    }
    request = encode_request(env, data, len, &request_len);
    if (!request) {
        set_error(&e, ERR_TRY_AGAIN, "podnetd is not available", "out of memory");
        goto fail;
    }
    relay_failure f = {{0}};
    unsigned char greeting[4];
    int r = call(&addr, request, request_len, &answer, &answer_len, greeting, &f);
    if (r == CALL_NOT_A_RELAY) {
        char msg[300];
        snprintf(msg, sizeof msg, "'socket' %.200s is not podnetd's CNI relay", addr.sun_path);
        set_error(&e, ERR_CONFIG, msg,
                  "it answered \\x%02x\\x%02x\\x%02x\\x%02x; the relay listens on podnetd's --cni-socket "
                  "(default " DEFAULT_SOCKET "), not on its gRPC --socket",
                  greeting[0], greeting[1], greeting[2], greeting[3]);
        goto fail;
    }
    if (r != CALL_OK) {
        set_error(&e, strcmp(command, "STATUS") ? ERR_TRY_AGAIN : ERR_UNAVAILABLE,
                  "podnetd is not available", "%s", f.text);
        goto fail;
    }
    if (answer_len > 1 && fwrite(answer + 1, 1, answer_len - 1, stdout) != answer_len - 1) {
        exit_code = 1;
        goto done;
    }
    exit_code = answer[0];
    goto done;
fail:
    exit_code = print_error(version, &e);
done:
    json_decref(config);
    free(answer);
    free(request);
    free(data);
    return exit_code;
}
