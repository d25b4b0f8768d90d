/* Checked wrappers around a transport's function table. */
#include "protocol/transport.h"

#include <string.h>

static int mb_transport_ok(const mb_transport *t)
{
    return t && t->ops && t->impl;
}

mb_status mb_transport_send_reserve(mb_transport *t, size_t bytes, int64_t timeout_ns, void **buf)
{
    if (!mb_transport_ok(t) || !buf || bytes == 0) return MB_STATUS_INVALID_ARG;
    return t->ops->send_reserve(t->impl, bytes, timeout_ns, buf);
}

mb_status mb_transport_send_commit(mb_transport *t, size_t bytes)
{
    if (!mb_transport_ok(t) || bytes == 0) return MB_STATUS_INVALID_ARG;
    return t->ops->send_commit(t->impl, bytes);
}

mb_status mb_transport_recv(mb_transport *t, int64_t timeout_ns, const void **buf, size_t *bytes)
{
    if (!mb_transport_ok(t) || !buf || !bytes) return MB_STATUS_INVALID_ARG;
    return t->ops->recv(t->impl, timeout_ns, buf, bytes);
}

void mb_transport_recv_release(mb_transport *t)
{
    if (mb_transport_ok(t)) t->ops->recv_release(t->impl);
}

size_t mb_transport_max_message_bytes(mb_transport *t)
{
    return mb_transport_ok(t) ? t->ops->max_message_bytes(t->impl) : 0;
}

mb_status mb_transport_shared_memory(mb_transport *t, void **base, size_t *bytes)
{
    if (!mb_transport_ok(t) || !base || !bytes) return MB_STATUS_INVALID_ARG;
    if (!t->ops->shared_memory) return MB_STATUS_UNSUPPORTED;
    return t->ops->shared_memory(t->impl, base, bytes);
}

void mb_transport_destroy(mb_transport *t)
{
    if (!mb_transport_ok(t)) return;
    t->ops->destroy(t->impl);
    t->ops = NULL;
    t->impl = NULL;
}

mb_status mb_transport_send_copy(mb_transport *t, const void *msg, size_t len, int64_t timeout_ns)
{
    void *buf = NULL;
    mb_status st = mb_transport_send_reserve(t, len, timeout_ns, &buf);
    if (st != MB_STATUS_OK) return st;
    memcpy(buf, msg, len);
    return mb_transport_send_commit(t, len);
}
