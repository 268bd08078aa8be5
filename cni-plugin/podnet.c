/*
 * podnet: the CNI plugin binary, native build.
 *
 * The same thin relay as cni-plugin/plugin.py (which stays the portable fallback and the
 * reference): it sends the invocation (CNI_* and the network config on stdin) to podnetd's
 * podnet.v1.Cni/Invoke over the daemon's unix socket and prints the answer. The daemon parses,
 * validates and formats. A Python interpreter alone takes ~10-14 ms to start here, more than the
 * reference Go plugins take for a whole ADD; this build starts in ~1 ms. It speaks the subset of
 * gRPC (HTTP/2 framing, HPACK literals, two protobuf messages) that one unary call needs.
 * Both builds are run by the same tests (tests/test_single_node.py and others).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/podnet/podnetd.sock"
#define LATEST "1.1.0"
#define VERSIONS "[\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"
#define CONNECT_TIMEOUT_MS 2000 /* daemon down or wedged: fail fast ("try again later") */
#define CALL_TIMEOUT_S 60
#define ERR_ENV 4
#define ERR_DECODE 6
#define ERR_TRY_AGAIN 11
#define ERR_UNAVAILABLE 50
#define MAX_FRAME 16384
#define OUR_WINDOW (1 << 20)

enum { DATA = 0, HEADERS = 1, RST_STREAM = 3, SETTINGS = 4, PING = 6, GOAWAY = 7,
       WINDOW_UPDATE = 8, CONTINUATION = 9 };
enum { END_STREAM = 1, ACK = 1, END_HEADERS = 4, PADDED = 8, PRIORITY = 0x20 };

typedef struct { unsigned char *p; size_t len, cap; } buf_t;

static void put(buf_t *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) { perror("podnet: realloc"); exit(1); }
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_byte(buf_t *b, unsigned char c) { put(b, &c, 1); }

static void put_varint(buf_t *b, uint64_t n) {
    while (n >= 0x80) { put_byte(b, (n & 0x7f) | 0x80); n >>= 7; }
    put_byte(b, (unsigned char)n);
}

/* ---- JSON output (errors and VERSION) ---------------------------------------------------- */

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static int fail(const char *version, int code, const char *msg, const char *details) {
    printf("{\"cniVersion\": ");
    json_str(stdout, version);
    printf(", \"code\": %d, \"msg\": ", code);
    json_str(stdout, msg);
    if (details && *details) { printf(", \"details\": "); json_str(stdout, details); }
    printf("}\n");
    if (details && *details) fprintf(stderr, "podnet: %s: %s\n", msg, details);
    return 1;
}

/* ---- the few config keys the relay itself needs ------------------------------------------ */

/* The string value of "key" in a JSON object, found by a scan (no parser: the daemon parses and
 * validates). Handles the escapes a path can carry. Returns 0 when absent or not a string. */
static int json_string_value(const buf_t *cfg, const char *key, char *out, size_t outlen) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const unsigned char *end = cfg->p + cfg->len;
    const unsigned char *at = cfg->len ? memmem(cfg->p, cfg->len, pattern, strlen(pattern)) : NULL;
    if (!at) return 0;
    at += strlen(pattern);
    while (at < end && strchr(" \t\r\n:", *at)) at++;
    if (at >= end || *at != '"') return 0;
    size_t n = 0;
    for (at++; at < end && *at != '"'; at++) {
        unsigned char c = *at;
        if (c == '\\' && at + 1 < end) {
            c = *++at;
            if (c == 'n') c = '\n'; else if (c == 't') c = '\t';
        }
        if (n + 1 >= outlen) return 0;
        out[n++] = (char)c;
    }
    out[n] = 0;
    return at < end;
}

static const char *requested_version(const buf_t *cfg, char *space, size_t len) {
    static const char *known[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
    if (json_string_value(cfg, "cniVersion", space, len))
        for (size_t i = 0; i < sizeof known / sizeof *known; i++)
            if (!strcmp(space, known[i])) return space;
    return LATEST;
}

/* Whether the config looks like a JSON object at all (the daemon does the real decoding; this
 * only lets the relay say "undecodable" rather than "daemon down" when it cannot ask). */
static int looks_like_object(const buf_t *cfg) {
    size_t i = 0, j = cfg->len;
    while (i < j && strchr(" \t\r\n", cfg->p[i])) i++;
    while (j > i && strchr(" \t\r\n", cfg->p[j - 1])) j--;
    return j - i >= 2 && cfg->p[i] == '{' && cfg->p[j - 1] == '}';
}

/* ---- HTTP/2 + HPACK + gRPC ------------------------------------------------------------------ */

static void be32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void frame_header(buf_t *b, size_t len, int type, int flags, uint32_t stream) {
    unsigned char h[9] = {len >> 16, len >> 8, len, type, flags, stream >> 24, stream >> 16,
                          stream >> 8, stream};
    put(b, h, 9);
}

static void hpack_int(buf_t *b, unsigned v, int prefix_bits, unsigned char first) {
    unsigned limit = (1u << prefix_bits) - 1;
    if (v < limit) { put_byte(b, first | v); return; }
    put_byte(b, first | limit);
    put_varint(b, v - limit);
}

static void hpack_str(buf_t *b, const char *s) { hpack_int(b, strlen(s), 7, 0); put(b, s, strlen(s)); }

static void request_headers(buf_t *b) {
    /* static table (RFC 7541 A): 3 :method POST, 6 :scheme http, 4 :path, 1 :authority,
       31 content-type; literals without indexing */
    put(b, "\x83\x86", 2);
    hpack_int(b, 4, 4, 0); hpack_str(b, "/podnet.v1.Cni/Invoke");
    hpack_int(b, 1, 4, 0); hpack_str(b, "localhost");
    hpack_int(b, 31, 4, 0); hpack_str(b, "application/grpc");
    put_byte(b, 0); hpack_str(b, "te"); hpack_str(b, "trailers");
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%dS", CALL_TIMEOUT_S);
    put_byte(b, 0); hpack_str(b, "grpc-timeout"); hpack_str(b, timeout);
}

typedef struct {
    int fd;
    long long deadline_ms;
    int greeted;
    char error[256];
    int reachable;
} conn_t;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int set_error(conn_t *c, int reachable, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    c->reachable = reachable;
    return -1;
}

static int send_all(conn_t *c, const unsigned char *p, size_t n) {
    while (n) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return set_error(c, 0, "talking to podnetd: %s", strerror(errno));
        }
        p += w; n -= (size_t)w;
    }
    return 0;
}

static int recv_exact(conn_t *c, unsigned char *p, size_t n, const char *path) {
    while (n) {
        long long left = c->deadline_ms - now_ms();
        struct pollfd pfd = {c->fd, POLLIN, 0};
        int r = left > 0 ? poll(&pfd, 1, (int)left) : 0;
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) return set_error(c, 0, "podnetd at %s did not answer in time", path);
        ssize_t got = recv(c->fd, p, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return set_error(c, c->greeted, "podnetd closed the connection");
        p += got; n -= (size_t)got;
    }
    return 0;
}

static size_t read_varint(const unsigned char *p, size_t len, size_t *pos, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; *pos < len && shift < 64; shift += 7) {
        unsigned char b = p[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) { *out = v; return 1; }
    }
    return 0;
}

static int hpack_read_int(const unsigned char *p, size_t len, size_t *pos, int bits, uint64_t *v) {
    unsigned limit = (1u << bits) - 1;
    if (*pos >= len) return 0;
    *v = p[(*pos)++] & limit;
    if (*v < limit) return 1;
    uint64_t extra;
    if (!read_varint(p, len, pos, &extra)) return 0;
    *v += extra;
    return 1;
}

/* Finds grpc-status / grpc-message among literal header fields. Huffman-coded or indexed
 * values are not decoded: they only matter on the error path, which then says less. */
static void scan_trailers(const unsigned char *p, size_t len, int *status, char *message, size_t mlen) {
    size_t pos = 0;
    while (pos < len) {
        unsigned char b = p[pos];
        uint64_t index, n;
        if (b & 0x80) { if (!hpack_read_int(p, len, &pos, 7, &index)) return; continue; }
        if ((b & 0xe0) == 0x20) { if (!hpack_read_int(p, len, &pos, 5, &index)) return; continue; }
        int bits = (b & 0xc0) == 0x40 ? 6 : 4;
        if (!hpack_read_int(p, len, &pos, bits, &index)) return;
        const unsigned char *name = NULL;
        uint64_t name_len = 0;
        int name_huff = 0;
        if (index == 0) {
            if (pos >= len) return;
            name_huff = p[pos] & 0x80;
            if (!hpack_read_int(p, len, &pos, 7, &name_len) || pos + name_len > len) return;
            name = p + pos; pos += name_len;
        }
        if (pos >= len) return;
        int value_huff = p[pos] & 0x80;
        if (!hpack_read_int(p, len, &pos, 7, &n) || pos + n > len) return;
        const unsigned char *value = p + pos;
        pos += n;
        if (!name || name_huff || value_huff) continue;
        if (name_len == 11 && !memcmp(name, "grpc-status", 11)) {
            char digits[12] = {0};
            memcpy(digits, value, n < 11 ? n : 11);
            *status = atoi(digits);
        } else if (name_len == 12 && !memcmp(name, "grpc-message", 12)) {
            size_t m = n < mlen - 1 ? n : mlen - 1;
            memcpy(message, value, m);
            message[m] = 0;
        }
    }
}

/* One unary call; on success *reply holds the CniResponse bytes. */
static int invoke(conn_t *c, const char *path, const buf_t *request, buf_t *reply) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        return set_error(c, 0, "socket path too long: %s", path);
    strcpy(addr.sun_path, path);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return set_error(c, 0, "socket: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        return set_error(c, 0, "cannot reach podnetd at %s: %s", path, strerror(errno));
    c->deadline_ms = now_ms() + CONNECT_TIMEOUT_MS;

    buf_t out = {0};
    put(&out, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    unsigned char settings[6] = {0, 4};
    be32(settings + 2, OUR_WINDOW);
    frame_header(&out, 6, SETTINGS, 0, 0);       /* INITIAL_WINDOW_SIZE: the reply never waits */
    put(&out, settings, 6);
    unsigned char increment[4];
    be32(increment, OUR_WINDOW - 65535);
    frame_header(&out, 4, WINDOW_UPDATE, 0, 0);
    put(&out, increment, 4);
    buf_t headers = {0};
    request_headers(&headers);
    frame_header(&out, headers.len, HEADERS, END_HEADERS, 1);
    put(&out, headers.p, headers.len);

    /* the gRPC message: 1 byte "not compressed" + 4 bytes length + protobuf */
    buf_t message = {0};
    unsigned char prefix[5] = {0};
    be32(prefix + 1, (uint32_t)request->len);
    put(&message, prefix, 5);
    put(&message, request->p, request->len);
    long long conn_window = 65535, stream_window = 65535;
    size_t sent = 0;

    buf_t body = {0}, block = {0};
    int status = 0, ended = 0;
    char grpc_message[160] = "";
    for (;;) {
        /* send what the flow-control windows allow, in frames of at most MAX_FRAME */
        while (sent < message.len && conn_window > 0 && stream_window > 0) {
            size_t n = message.len - sent;
            if (n > MAX_FRAME) n = MAX_FRAME;
            if ((long long)n > conn_window) n = (size_t)conn_window;
            if ((long long)n > stream_window) n = (size_t)stream_window;
            int last = sent + n == message.len;
            frame_header(&out, n, DATA, last ? END_STREAM : 0, 1);
            put(&out, message.p + sent, n);
            sent += n; conn_window -= (long long)n; stream_window -= (long long)n;
        }
        if (out.len) {
            if (send_all(c, out.p, out.len) < 0) return -1;
            out.len = 0;
        }
        if (ended) break;
        unsigned char h[9];
        if (recv_exact(c, h, 9, path) < 0) return -1;
        size_t len = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
        int type = h[3], flags = h[4];
        uint32_t stream = ((uint32_t)h[5] << 24 | h[6] << 16 | h[7] << 8 | h[8]) & 0x7fffffff;
        unsigned char *payload = malloc(len + 1);
        if (!payload || recv_exact(c, payload, len, path) < 0) { free(payload); return -1; }
        if (!c->greeted) { c->greeted = 1; c->deadline_ms = now_ms() + CALL_TIMEOUT_S * 1000LL; }
        size_t start = 0, stop = len;
        if ((type == DATA || type == HEADERS) && (flags & PADDED) && len) { start = 1; stop = len - payload[0]; }
        if (type == HEADERS && (flags & PRIORITY)) start += 5;
        if (start > stop) stop = start;
        if (type == SETTINGS && !(flags & ACK)) {
            for (size_t i = 0; i + 6 <= len; i += 6)
                if ((payload[i] << 8 | payload[i + 1]) == 4) {
                    long long v = (long long)payload[i + 2] << 24 | payload[i + 3] << 16 | payload[i + 4] << 8 | payload[i + 5];
                    stream_window += v - 65535;
                }
            frame_header(&out, 0, SETTINGS, ACK, 0);
        } else if (type == PING && !(flags & ACK)) {
            frame_header(&out, len, PING, ACK, 0);
            put(&out, payload, len);
        } else if (type == WINDOW_UPDATE && len == 4) {
            long long inc = ((long long)payload[0] << 24 | payload[1] << 16 | payload[2] << 8 | payload[3]) & 0x7fffffff;
            if (stream == 0) conn_window += inc; else if (stream == 1) stream_window += inc;
        } else if (type == GOAWAY && stream == 0 && !body.len && len >= 8) {
            unsigned code = (unsigned)payload[4] << 24 | payload[5] << 16 | payload[6] << 8 | payload[7];
            free(payload);
            return set_error(c, 1, "podnetd closed the connection (GOAWAY %u)", code);
        } else if (stream == 1 && type == RST_STREAM) {
            free(payload);
            return set_error(c, 1, "podnetd reset the call");
        } else if (stream == 1 && type == DATA) {
            put(&body, payload + start, stop - start);
        } else if (stream == 1 && (type == HEADERS || type == CONTINUATION)) {
            put(&block, payload + start, stop - start);
            if (flags & END_HEADERS) {
                scan_trailers(block.p, block.len, &status, grpc_message, sizeof grpc_message);
                block.len = 0;
            }
        }
        if (stream == 1 && (type == DATA || type == HEADERS) && (flags & END_STREAM)) ended = 1;
        free(payload);
    }
    if (status != 0 || body.len < 5)
        return set_error(c, 1, "podnetd refused the call: grpc-status %d %s", status, grpc_message);
    size_t n = (size_t)body.p[1] << 24 | (size_t)body.p[2] << 16 | (size_t)body.p[3] << 8 | body.p[4];
    if (n > body.len - 5) return set_error(c, 1, "truncated reply from podnetd");
    put(reply, body.p + 5, n);
    return 0;
}

/* CniResponse: 1 exit_code (varint), 2 stdout (bytes); unknown fields skipped */
static int decode_response(const buf_t *r, int *exit_code, const unsigned char **out, size_t *out_len) {
    size_t pos = 0;
    *exit_code = 0; *out = NULL; *out_len = 0;
    while (pos < r->len) {
        uint64_t tag, v;
        if (!read_varint(r->p, r->len, &pos, &tag)) return -1;
        switch (tag & 7) {
        case 0:
            if (!read_varint(r->p, r->len, &pos, &v)) return -1;
            if (tag >> 3 == 1) *exit_code = (int)(int64_t)v;
            break;
        case 2:
            if (!read_varint(r->p, r->len, &pos, &v) || pos + v > r->len) return -1;
            if (tag >> 3 == 2) { *out = r->p + pos; *out_len = v; }
            pos += v;
            break;
        case 1: pos += 8; break;
        case 5: pos += 4; break;
        default: return -1;
        }
    }
    return pos == r->len ? 0 : -1;
}

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (command && !strcmp(command, "VERSION")) {
        printf("{\"cniVersion\": \"" LATEST "\", \"supportedVersions\": " VERSIONS "}\n");
        return 0;
    }
    buf_t config = {0};
    unsigned char chunk[65536];
    ssize_t n;
    while ((n = read(0, chunk, sizeof chunk)) != 0) {
        if (n < 0) { if (errno == EINTR) continue; break; }
        put(&config, chunk, (size_t)n);
    }
    char version_space[16];
    const char *version = requested_version(&config, version_space, sizeof version_space);
    if (!command || !*command) return fail(version, ERR_ENV, "CNI_COMMAND is not set", "");

    /* CniRequest (proto/podnet/v1/node.proto): 1..6 the CNI_* variables, 7 the config */
    static const char *env_fields[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME",
                                       "CNI_ARGS", "CNI_PATH"};
    buf_t request = {0};
    for (int i = 0; i < 6; i++) {
        const char *v = getenv(env_fields[i]);
        if (!v || !*v) continue;
        put_varint(&request, (uint64_t)(i + 1) << 3 | 2);
        put_varint(&request, strlen(v));
        put(&request, v, strlen(v));
    }
    if (config.len) {
        put_varint(&request, 7 << 3 | 2);
        put_varint(&request, config.len);
        put(&request, config.p, config.len);
    }
    char socket_path[512];
    if (!json_string_value(&config, "socket", socket_path, sizeof socket_path))
        strcpy(socket_path, DEFAULT_SOCKET);

    conn_t conn = {.fd = -1};
    buf_t reply = {0};
    if (invoke(&conn, socket_path, &request, &reply) < 0) {
        if (!looks_like_object(&config))
            return fail(version, ERR_DECODE, "cannot decode the network configuration",
                        "not a JSON object");
        int code = strcmp(command, "STATUS") ? ERR_TRY_AGAIN : ERR_UNAVAILABLE;
        return fail(version, code, "podnetd is not available", conn.error);
    }
    int exit_code;
    const unsigned char *out;
    size_t out_len;
    if (decode_response(&reply, &exit_code, &out, &out_len) < 0)
        return fail(version, ERR_TRY_AGAIN, "podnetd is not available", "undecodable reply");
    if (out_len) fwrite(out, 1, out_len, stdout);
    return exit_code;
}
