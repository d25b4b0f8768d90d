/* CURVE authentication for the ZeroMQ transport: key files (z85 text), the
 * keypair that `moe-broker keygen` writes, and the ZAP handler, a thread per
 * listening transport that admits a client only when its public key is
 * listed in the allow file. The handler answers libzmq's ZAP requests on
 * inproc://zeromq.zap.01 in the transport's own context; libzmq closes the
 * connection of a client it refuses, so such a peer never reaches recv. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "protocol/zmq_impl.h"

#define MB_ZMQ_ZAP_ENDPOINT "inproc://zeromq.zap.01"
/* Frames of a ZAP request for CURVE: version, request id, domain, address,
 * routing id, mechanism, client key. */
#define MB_ZMQ_ZAP_FRAMES 7
/* An allow file is read whole at each handshake; past this it is refused. */
#define MB_ZMQ_ALLOW_MAX_BYTES (1u << 20)

int mb_zmq_has_curve(void)
{
    return zmq_has("curve") == 1;
}

/* 1 when text[0..40) is a z85 key (decodes to 32 bytes). */
static int mb_zmq_key_decode(const char *text, uint8_t out[32]);

/* 1 when a trimmed line holds a key: 40 z85 characters, alone or followed
 * by blanks and a comment. Anything else ('#' comments included: '#' is a
 * z85 digit, so a comment is told apart by its spaces) is not. */
static int mb_zmq_line_key(const char *line, size_t len, uint8_t out[32])
{
    if (len < MB_ZMQ_KEY_CHARS) return 0;
    if (len > MB_ZMQ_KEY_CHARS && line[MB_ZMQ_KEY_CHARS] != ' ' && line[MB_ZMQ_KEY_CHARS] != '\t') return 0;
    return mb_zmq_key_decode(line, out);
}

static int mb_zmq_key_decode(const char *text, uint8_t out[32])
{
    char z[MB_ZMQ_KEY_CHARS + 1];
    memcpy(z, text, MB_ZMQ_KEY_CHARS);
    z[MB_ZMQ_KEY_CHARS] = '\0';
    return zmq_z85_decode(out, z) != NULL;
}

/* The next line of buf (len bytes) that is not blank, trimmed, starting at
 * *at; advances *at past it. NULL at the end. */
static const char *mb_zmq_next_line(const char *buf, size_t len, size_t *at, size_t *line_len)
{
    while (*at < len) {
        size_t s = *at, e = s;
        while (e < len && buf[e] != '\n')
            e++;
        *at = e < len ? e + 1 : e;
        while (s < e && (buf[s] == ' ' || buf[s] == '\t'))
            s++;
        size_t t = e;
        while (t > s && (buf[t - 1] == ' ' || buf[t - 1] == '\t' || buf[t - 1] == '\r'))
            t--;
        if (t == s) continue;
        *line_len = t - s;
        return buf + s;
    }
    return NULL;
}

/* Reads a whole small file into a malloc'd buffer. */
static mb_status mb_zmq_read_small(const char *path, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return errno == ENOENT ? MB_STATUS_NOT_FOUND : MB_STATUS_IO;
    struct stat sb;
    mb_status st = MB_STATUS_IO;
    char *buf = NULL;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) goto done;
    if ((uint64_t)sb.st_size > MB_ZMQ_ALLOW_MAX_BYTES) {
        st = MB_STATUS_FORMAT;
        goto done;
    }
    buf = malloc((size_t)sb.st_size + 1);
    if (!buf) {
        st = MB_STATUS_NOMEM;
        goto done;
    }
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    buf = NULL;
    st = MB_STATUS_OK;
done:
    free(buf);
    close(fd);
    return st;
}

mb_status mb_zmq_key_load(const char *path, char key[MB_ZMQ_KEY_CHARS + 1])
{
    if (!path || !key) return MB_STATUS_INVALID_ARG;
    char *buf = NULL;
    size_t len = 0, at = 0, line_len = 0;
    mb_status st = mb_zmq_read_small(path, &buf, &len);
    if (st != MB_STATUS_OK) return st;
    const char *line;
    uint8_t bin[32];
    st = MB_STATUS_FORMAT;
    while ((line = mb_zmq_next_line(buf, len, &at, &line_len))) {
        if (!mb_zmq_line_key(line, line_len, bin)) continue;
        memcpy(key, line, MB_ZMQ_KEY_CHARS);
        key[MB_ZMQ_KEY_CHARS] = '\0';
        st = MB_STATUS_OK;
        break;
    }
    explicit_bzero(bin, sizeof bin);
    explicit_bzero(buf, len);
    free(buf);
    return st;
}

mb_status mb_zmq_key_public(const char *secret, char pub[MB_ZMQ_KEY_CHARS + 1])
{
    if (!secret || !pub || strlen(secret) != MB_ZMQ_KEY_CHARS) return MB_STATUS_INVALID_ARG;
    if (zmq_curve_public(pub, secret) != 0) return MB_STATUS_UNSUPPORTED;
    return MB_STATUS_OK;
}

/* Writes text to path, created with mode; refuses an existing file. */
static mb_status mb_zmq_write_new(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) return errno == EEXIST ? MB_STATUS_CONFIG : MB_STATUS_IO;
    size_t len = strlen(text), at = 0;
    while (at < len) {
        ssize_t n = write(fd, text + at, len - at);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        at += (size_t)n;
    }
    int ok = at == len && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    return ok ? MB_STATUS_OK : MB_STATUS_IO;
}

mb_status mb_zmq_keygen(const char *dir, char *err, size_t err_cap)
{
    if (!dir || !dir[0]) return MB_STATUS_INVALID_ARG;
    if (!mb_zmq_has_curve()) {
        snprintf(err, err_cap, "this libzmq has no CURVE support (built without libsodium)");
        return MB_STATUS_UNSUPPORTED;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, err_cap, "cannot create %s: %s", dir, strerror(errno));
        return MB_STATUS_IO;
    }
    char pub[MB_ZMQ_KEY_CHARS + 1], sec[MB_ZMQ_KEY_CHARS + 1];
    if (zmq_curve_keypair(pub, sec) != 0) {
        snprintf(err, err_cap, "cannot make a CURVE keypair: %s", zmq_strerror(zmq_errno()));
        return MB_STATUS_UNSUPPORTED;
    }
    char path_sec[4096], path_pub[4096], text[256];
    if ((size_t)snprintf(path_sec, sizeof path_sec, "%s/secret.key", dir) >= sizeof path_sec ||
        (size_t)snprintf(path_pub, sizeof path_pub, "%s/public.key", dir) >= sizeof path_pub) {
        snprintf(err, err_cap, "folder name too long");
        return MB_STATUS_INVALID_ARG;
    }
    snprintf(text, sizeof text, "# moe-broker CURVE secret key: keep it private\n%s\n", sec);
    mb_status st = mb_zmq_write_new(path_sec, text, 0600);
    explicit_bzero(text, sizeof text);
    explicit_bzero(sec, sizeof sec);
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "cannot write %s: %s", path_sec,
                 st == MB_STATUS_CONFIG ? "it exists already (keys are never overwritten)" : strerror(errno));
        return st;
    }
    snprintf(text, sizeof text, "# moe-broker CURVE public key\n%s\n", pub);
    st = mb_zmq_write_new(path_pub, text, 0644);
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "cannot write %s: %s", path_pub,
                 st == MB_STATUS_CONFIG ? "it exists already (keys are never overwritten)" : strerror(errno));
        unlink(path_sec);
        return st;
    }
    return MB_STATUS_OK;
}

/* ---- ZAP handler ---- */

struct mb_zmq_zap {
    void *sock; /* REP bound to MB_ZMQ_ZAP_ENDPOINT, used by the thread only */
    pthread_t thread;
    char *allow_file;
};

/* 1 when key (32 bytes) is listed in the allow file. Read at every
 * handshake, so removing a line revokes that key for new connections. */
static int mb_zmq_zap_allowed(const char *allow_file, const uint8_t *key)
{
    char *buf = NULL;
    size_t len = 0, at = 0, line_len = 0;
    if (mb_zmq_read_small(allow_file, &buf, &len) != MB_STATUS_OK) return 0;
    int ok = 0;
    const char *line;
    while (!ok && (line = mb_zmq_next_line(buf, len, &at, &line_len))) {
        uint8_t bin[32];
        if (mb_zmq_line_key(line, line_len, bin) && memcmp(bin, key, 32) == 0) ok = 1;
    }
    free(buf);
    return ok;
}

static int mb_zmq_zap_send(void *sock, const void *data, size_t len, int more)
{
    while (zmq_send(sock, data, len, more ? ZMQ_SNDMORE : 0) < 0)
        if (zmq_errno() != EINTR) return -1;
    return 0;
}

/* Answers ZAP requests until the context shuts down (ETERM). */
static void *mb_zmq_zap_main(void *arg)
{
    mb_zmq_zap *z = arg;
    for (;;) {
        zmq_msg_t f[MB_ZMQ_ZAP_FRAMES];
        size_t n = 0;
        int more = 1, term = 0;
        while (more) {
            zmq_msg_t scratch, *m = n < MB_ZMQ_ZAP_FRAMES ? &f[n] : &scratch;
            zmq_msg_init(m);
            if (zmq_msg_recv(m, z->sock, 0) < 0) {
                int e = zmq_errno();
                zmq_msg_close(m);
                if (e == EINTR) continue;
                term = 1;
                break;
            }
            more = zmq_msg_more(m);
            if (m == &scratch) zmq_msg_close(m);
            else n++;
        }
        if (term) {
            for (size_t i = 0; i < n; i++)
                zmq_msg_close(&f[i]);
            break;
        }
        int ok = n == MB_ZMQ_ZAP_FRAMES && zmq_msg_size(&f[0]) == 3 && !memcmp(zmq_msg_data(&f[0]), "1.0", 3) &&
                 zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "CURVE", 5) &&
                 zmq_msg_size(&f[6]) == 32 && mb_zmq_zap_allowed(z->allow_file, zmq_msg_data(&f[6]));
        /* The reply echoes the request id; libzmq drops a reply it cannot
         * match, which also refuses the client. */
        const char *code = ok ? "200" : "400";
        const char *text = ok ? "OK" : "key not allowed";
        int sent = n >= 2;
        if (sent) {
            sent = !mb_zmq_zap_send(z->sock, "1.0", 3, 1) &&
                   !mb_zmq_zap_send(z->sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), 1) &&
                   !mb_zmq_zap_send(z->sock, code, 3, 1) && !mb_zmq_zap_send(z->sock, text, strlen(text), 1) &&
                   !mb_zmq_zap_send(z->sock, "", 0, 1) && !mb_zmq_zap_send(z->sock, "", 0, 0);
        }
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
        if (!sent && n >= 2) break; /* context terminating */
    }
    int linger = 0;
    zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(z->sock);
    return NULL;
}

mb_status mb_zmq_zap_start(void *ctx, const char *allow_file, mb_zmq_zap **out)
{
    mb_zmq_zap *z = calloc(1, sizeof *z);
    if (!z) return MB_STATUS_NOMEM;
    z->allow_file = strdup(allow_file);
    if (!z->allow_file) goto nomem;
    z->sock = zmq_socket(ctx, ZMQ_REP);
    if (!z->sock) goto nomem;
    int linger = 0;
    zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(z->sock, MB_ZMQ_ZAP_ENDPOINT) != 0) {
        zmq_close(z->sock);
        free(z->allow_file);
        free(z);
        return MB_STATUS_IO;
    }
    /* pthread_create orders the socket's setup before the thread's use. */
    if (pthread_create(&z->thread, NULL, mb_zmq_zap_main, z) != 0) {
        zmq_close(z->sock);
        goto nomem;
    }
    *out = z;
    return MB_STATUS_OK;
nomem:
    free(z->allow_file);
    free(z);
    return MB_STATUS_NOMEM;
}

void mb_zmq_zap_join(mb_zmq_zap *z)
{
    if (!z) return;
    pthread_join(z->thread, NULL);
    free(z->allow_file);
    free(z);
}
