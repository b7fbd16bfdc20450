/* watlinks: the IMG links of one WAT record, read straight from its JSON bytes.
 *
 * The extraction's hot loop. The general path (orjson + page_links) turns every link of a page
 * into Python objects before looking at it; here the `Links` array of a record that simdjson has
 * already validated is walked in C, and only the pairs we keep become Python strings. The result equals
 * `spark_jobs.wat.page_links` exactly, or the function says it cannot vouch for it (returns None)
 * and the caller goes the slow, general way. The rare cases of URL resolution and HTML entities
 * are handed back to the Python callables the caller passes, so there is one definition of each.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
/* WATLINKS_SCALAR builds the portable loop on x86 too, so tests cover what ARM machines run. */
#if defined(__SSE2__) && !defined(WATLINKS_SCALAR)
#define WATLINKS_SSE2 1
#include <emmintrin.h>
#endif

static const char LINKS_KEY[] = "\"Links\":[";
static const char IMG_PATH[] = "IMG@/src";
/* The license marker, creativecommons.org/licenses/, in two parts: the host is in every license
 * url however its slashes are escaped. */
static const char LICENSE_HOST[] = "creativecommons.org";
static const char LICENSE_PATH[] = "/licenses/";

/* A growable byte buffer, reused for every string of a record. */
typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buffer;

static int buffer_reserve(Buffer *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (!data) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buffer_add(Buffer *b, const char *s, Py_ssize_t n) {
    if (buffer_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

/* A JSON string in the record: the bytes between its quotes, and whether they hold escapes. */
typedef struct {
    const char *start;
    Py_ssize_t len;
    int escaped;
} Span;

enum { OK = 0, UNSURE = 1, FAILED = -1 }; /* FAILED: a Python exception is set */

static int is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && is_ws(*p)) p++;
    return p;
}

/* The first '"' or '\\' at or after `p` (`end` if none): 16 bytes at a time where SSE2 is there. */
static const char *quote_or_backslash(const char *p, const char *end) {
#ifdef WATLINKS_SSE2
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    for (; end - p >= 16; p += 16) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)p);
        int hits = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(chunk, quote), _mm_cmpeq_epi8(chunk, backslash)));
        if (hits) return p + __builtin_ctz(hits);
    }
#endif
    while (p < end && *p != '"' && *p != '\\') p++;
    return p;
}

/* `p` is just past an opening quote; returns the closing quote (or NULL) and fills `span`. */
static const char *read_string(const char *p, const char *end, Span *span) {
    const char *q = p;
    int escaped = 0;
    for (;;) {
        q = quote_or_backslash(q, end);
        if (q >= end) return NULL;
        if (*q == '"') break;
        escaped = 1;
        q += 2; /* a backslash and the character it escapes */
    }
    span->start = p;
    span->len = q - p;
    span->escaped = escaped;
    return q;
}

/* A hex digit's value, or -1. */
static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_value(p[i]);
        if (d < 0) return -1;
        v = v << 4 | (unsigned)d;
    }
    *out = v;
    return 0;
}

/* A character as UTF-8 at `w`; callers only use it where it replaces a longer escape. */
static char *put_utf8(char *w, unsigned cp) {
    if (cp < 0x80) {
        *w++ = (char)cp;
    } else if (cp < 0x800) {
        *w++ = (char)(0xC0 | (cp >> 6));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *w++ = (char)(0xE0 | (cp >> 12));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *w++ = (char)(0xF0 | (cp >> 18));
        *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    }
    return w;
}

/* The UTF-8 bytes of a JSON string's value into `out` (emptied first). UNSURE for a lone surrogate
 * or a malformed escape: orjson rejects those, and the slow path reports them as it does. */
static int decode_string(const Span *s, Buffer *out) {
    out->len = 0;
    if (!s->escaped) return buffer_add(out, s->start, s->len) < 0 ? FAILED : OK;
    if (buffer_reserve(out, s->len) < 0) return FAILED; /* decoding never grows the text */
    const char *p = s->start, *end = s->start + s->len;
    char *w = out->data;
    while (p < end) {
        if (*p != '\\') {
            *w++ = *p++;
            continue;
        }
        if (p + 1 >= end) return UNSURE;
        char c = p[1];
        p += 2;
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            unsigned cp, low;
            if (end - p < 4 || hex4(p, &cp) < 0) return UNSURE;
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &low) < 0 || low < 0xDC00 || low > 0xDFFF)
                    return UNSURE;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return UNSURE;
            }
            w = put_utf8(w, cp); /* \uXXXX is 6 bytes and becomes at most 3; a pair is 12 and becomes 4 */
            break;
        }
        default: return UNSURE;
        }
    }
    out->len = w - out->data;
    return OK;
}

static int starts_with(const char *s, Py_ssize_t n, const char *prefix) {
    Py_ssize_t k = (Py_ssize_t)strlen(prefix);
    return n >= k && memcmp(s, prefix, k) == 0;
}

/* A numeric reference `&#...;` at `r` to an ordinary character, read as html.unescape reads it:
 * its length and code point, or 0 for a form html.unescape has to judge itself (no ';', controls,
 * its cp1252 remaps, surrogates, noncharacters, huge numbers). */
static Py_ssize_t numeric_reference(const char *r, const char *end, unsigned *cp) {
    const char *p = r + 2;
    int hex = p < end && (*p == 'x' || *p == 'X');
    p += hex;
    const char *digits = p;
    unsigned long v = 0;
    for (; p < end && p - digits < 8; p++) {
        int d = hex ? hex_value(*p) : (*p >= '0' && *p <= '9') ? *p - '0' : -1;
        if (d < 0) break;
        v = v * (hex ? 16 : 10) + d;
    }
    if (p == digits || p >= end || *p != ';') return 0;
    if (v < 0x20 || (v >= 0x7F && v <= 0x9F) || (v >= 0xD800 && v <= 0xDFFF) || (v >= 0xFDD0 && v <= 0xFDEF) ||
        (v & 0xFFFE) == 0xFFFE || v > 0x10FFFF)
        return 0;
    *cp = (unsigned)v;
    return p + 1 - r;
}

/* Named references that html.unescape maps to one character, with their ';' (without it, or for
 * any other name, html.unescape has rules of its own). */
static const struct {
    const char *name;
    unsigned cp;
} NAMED[] = {{"&amp;", '&'}, {"&quot;", '"'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&apos;", '\''}, {"&nbsp;", 0xA0}};

/* html.unescape's result when every '&' starts one of the references above, in one left-to-right
 * pass as html.unescape makes it. Returns 0 when another form needs html.unescape itself. */
static int unescape_simple(Buffer *text) {
    char *r = text->data, *w = text->data, *end = text->data + text->len;
    if (!memchr(r, '&', end - r)) return 1;
    while (r < end) {
        if (*r != '&') {
            *w++ = *r++;
            continue;
        }
        unsigned cp = 0;
        Py_ssize_t used = 0;
        if (end - r > 2 && r[1] == '#') {
            used = numeric_reference(r, end, &cp);
        } else {
            for (size_t i = 0; i < sizeof NAMED / sizeof NAMED[0] && !used; i++) {
                Py_ssize_t k = (Py_ssize_t)strlen(NAMED[i].name);
                if (end - r >= k && memcmp(r, NAMED[i].name, k) == 0) used = k, cp = NAMED[i].cp;
            }
        }
        if (!used) return 0;
        w = put_utf8(w, cp); /* in place: every reference is longer than its character's UTF-8 */
        r += used;
    }
    text->len = w - text->data;
    return 1;
}

static PyObject *utf8(const char *s, Py_ssize_t n) { return PyUnicode_DecodeUTF8(s, n, "strict"); }

/* The prefixes relative URLs are joined with, from spark_jobs.wat.Resolver (None: no fast joins). */
typedef struct {
    const char *scheme, *root, *directory;
    Py_ssize_t scheme_len, root_len, directory_len;
    int fast;
} Base;

static int is_alnum(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

static int has_dot_segment(const char *u, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i + 1 < n; i++)
        if (u[i] == '/' && u[i + 1] == '.') return 1;
    return 0;
}

/* Resolver._up: leading "../" segments against the page's directory, clamped at the root. */
static int join_up(const Base *base, const char *u, Py_ssize_t n, Buffer *scratch) {
    const char *path = base->directory + base->root_len;
    Py_ssize_t path_len = base->directory_len - base->root_len;
    while (n >= 3 && memcmp(u, "../", 3) == 0) {
        u += 3, n -= 3;
        Py_ssize_t cut = path_len; /* path[: path.rstrip("/").rfind("/") + 1] or "/" */
        while (cut > 0 && path[cut - 1] == '/') cut--;
        while (cut > 0 && path[cut - 1] != '/') cut--;
        if (cut == 0) path = "/", cut = 1;
        path_len = cut;
    }
    if (n == 0 || !is_alnum(u[0]) || has_dot_segment(u, n)) return 0; /* more dot segments or an odd shape */
    scratch->len = 0;
    if (buffer_add(scratch, base->root, base->root_len) < 0 || buffer_add(scratch, path, path_len) < 0 ||
        buffer_add(scratch, u, n) < 0)
        return -1;
    return 1;
}

/* A joined URL in `scratch`; 0 when the shape is one for Resolver/urljoin (the caller calls back). */
static int join_fast(const Base *base, const Buffer *url, Buffer *scratch, int *as_is) {
    const char *u = url->data;
    Py_ssize_t n = url->len;
    *as_is = 0;
    if (!base->fast || n == 0) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if ((unsigned char)u[i] < 0x21 || (unsigned char)u[i] > 0x7E) return 0; /* space, control, non-ASCII */
    if (n >= 3 && memcmp(u, "../", 3) == 0) return join_up(base, u, n, scratch);
    if (u[0] == '.' || has_dot_segment(u, n)) return 0;
    scratch->len = 0;
    if (n >= 2 && u[0] == '/' && u[1] == '/') {
        if (buffer_add(scratch, base->scheme, base->scheme_len) < 0 || buffer_add(scratch, ":", 1) < 0) return -1;
    } else if (u[0] == '/') {
        if (buffer_add(scratch, base->root, base->root_len) < 0) return -1;
    } else {
        const char *slash = memchr(u, '/', n);
        Py_ssize_t first_len = slash ? slash - u : n;
        const char *colon = memchr(u, ':', first_len);
        if (!colon && is_alnum(u[0])) {
            if (buffer_add(scratch, base->directory, base->directory_len) < 0) return -1;
        } else if (colon && is_alpha(u[0])) {
            Py_ssize_t scheme_len = colon - u;
            for (Py_ssize_t i = 0; i < scheme_len; i++)
                if (!is_alnum(u[i]) && u[i] != '+' && u[i] != '-' && u[i] != '.') return 0;
            if ((scheme_len == 4 && PyOS_strnicmp(u, "http", 4) == 0) || (scheme_len == 5 && PyOS_strnicmp(u, "https", 5) == 0))
                return 0; /* "http:x.jpg": urljoin's business */
            *as_is = 1; /* another scheme (data:, javascript:, ftp:): urljoin keeps it as it is */
            return 1;
        } else {
            return 0;
        }
    }
    return buffer_add(scratch, u, n) < 0 ? -1 : 1;
}

/* Resolver(base)(url) for a decoded URL: the common shapes here, the rest through `resolve`. */
static PyObject *absolute_url(const Base *base, Buffer *url, Buffer *scratch, PyObject *resolve) {
    PyObject *original = NULL;
    if (memchr(url->data, '&', url->len)) {
        original = utf8(url->data, url->len);
        if (!original) return NULL;
        if (!unescape_simple(url)) { /* another reference: Resolver unescapes and joins it */
            PyObject *joined = PyObject_CallOneArg(resolve, original);
            Py_DECREF(original);
            return joined;
        }
    }
    if (starts_with(url->data, url->len, "http://") || starts_with(url->data, url->len, "https://")) {
        Py_XDECREF(original);
        return utf8(url->data, url->len);
    }
    int as_is;
    int fast = join_fast(base, url, scratch, &as_is);
    if (fast < 0) {
        Py_XDECREF(original);
        return NULL;
    }
    if (fast) {
        Py_XDECREF(original);
        return as_is ? utf8(url->data, url->len) : utf8(scratch->data, scratch->len);
    }
    if (!original && !(original = utf8(url->data, url->len))) return NULL;
    PyObject *joined = PyObject_CallOneArg(resolve, original);
    Py_DECREF(original);
    return joined;
}

/* html.unescape(alt) if "&" in alt else alt, for a decoded alt text. */
static PyObject *alt_text(Buffer *alt, PyObject *unescape) {
    if (!memchr(alt->data, '&', alt->len)) return utf8(alt->data, alt->len);
    PyObject *original = utf8(alt->data, alt->len);
    if (!original) return NULL;
    if (unescape_simple(alt)) {
        Py_DECREF(original);
        return utf8(alt->data, alt->len);
    }
    PyObject *text = PyObject_CallOneArg(unescape, original);
    Py_DECREF(original);
    return text;
}

/* Whether a string's value is `text`, in *equal; the status of decoding it otherwise. */
static int span_equals(const Span *s, Buffer *scratch, const char *text, int *equal) {
    Py_ssize_t n = (Py_ssize_t)strlen(text);
    if (!s->escaped) {
        *equal = s->len == n && memcmp(s->start, text, n) == 0;
        return OK;
    }
    int rc = decode_string(s, scratch);
    *equal = rc == OK && scratch->len == n && memcmp(scratch->data, text, n) == 0;
    return rc;
}

typedef struct {
    Span path, url, alt;
    int has_path, has_url, has_alt;
} Link;

/* One link object `{"k":"v",...}` from `p` (at its '{'): just past it, or NULL when a value is
 * not a string or the shape is otherwise not one we read exactly. */
static const char *read_link(const char *p, const char *end, Link *link) {
    memset(link, 0, sizeof *link);
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return p + 1;
    for (;;) {
        Span key, value;
        if (p >= end || *p != '"' || !(p = read_string(p + 1, end, &key))) break;
        p = skip_ws(p + 1, end);
        if (p >= end || *p != ':') break;
        p = skip_ws(p + 1, end);
        if (p >= end || *p != '"' || !(p = read_string(p + 1, end, &value))) break; /* not a string */
        if (key.escaped) break;
        /* Duplicate keys: the last one wins, as in orjson's dict. */
        if (key.len == 4 && memcmp(key.start, "path", 4) == 0) link->path = value, link->has_path = 1;
        else if (key.len == 3 && memcmp(key.start, "url", 3) == 0) link->url = value, link->has_url = 1;
        else if (key.len == 3 && memcmp(key.start, "alt", 3) == 0) link->alt = value, link->has_alt = 1;
        p = skip_ws(p + 1, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') return p + 1;
        break;
    }
    return NULL;
}

static const char *find_links(const char *body, Py_ssize_t n) {
    const char *at = memmem(body, n, LINKS_KEY, sizeof LINKS_KEY - 1);
    if (!at) return NULL;
    const char *before = at;
    while (before > body && is_ws(before[-1])) before--;
    if (before == body || (before[-1] != '{' && before[-1] != ',')) return NULL; /* not a key we can place */
    return at;
}

typedef struct {
    PyObject *pairs, *license;
    Py_ssize_t count;
} Found;

static int add_pair(Found *found, const Base *base, const Link *link, Buffer *url, Buffer *alt, Buffer *scratch,
                    PyObject *resolve, PyObject *unescape) {
    int rc = decode_string(&link->url, url);
    if (rc == OK) rc = decode_string(&link->alt, alt);
    if (rc != OK) return rc;
    PyObject *absolute = absolute_url(base, url, scratch, resolve);
    if (!absolute) return FAILED;
    PyObject *text = alt_text(alt, unescape);
    if (!text) {
        Py_DECREF(absolute);
        return FAILED;
    }
    PyObject *pair = PyTuple_Pack(2, absolute, text);
    Py_DECREF(absolute);
    Py_DECREF(text);
    if (!pair) return FAILED;
    rc = PyList_Append(found->pairs, pair);
    Py_DECREF(pair);
    return rc < 0 ? FAILED : OK;
}

/* Whether a url contains the license marker: found from its slashes, far cheaper than memmem. */
static int has_license_marker(const char *text, Py_ssize_t n) {
    static const Py_ssize_t host_len = sizeof LICENSE_HOST - 1, path_len = sizeof LICENSE_PATH - 1;
    for (const char *p = text; (p = memchr(p, '/', text + n - p)); p++)
        if (p - text >= host_len && text + n - p >= path_len && memcmp(p, LICENSE_PATH, path_len) == 0 &&
            memcmp(p - host_len, LICENSE_HOST, host_len) == 0)
            return 1;
    return 0;
}

/* A non-IMG link's url, when it is the page's first Creative Commons license. */
static int note_license(Found *found, const Link *link, Buffer *url) {
    const char *text = link->url.start;
    Py_ssize_t n = link->url.len;
    if (link->url.escaped) {
        int rc = decode_string(&link->url, url);
        if (rc != OK) return rc;
        text = url->data, n = url->len;
    }
    if (!has_license_marker(text, n)) return OK;
    found->license = utf8(text, n);
    return found->license ? OK : FAILED;
}

static int read_links(const char *body, Py_ssize_t n, const Base *base, PyObject *resolve, PyObject *unescape,
                      Found *found) {
    const char *end = body + n;
    const char *at = find_links(body, n);
    if (!at) return UNSURE;
    const char *p = skip_ws(at + sizeof LINKS_KEY - 1, end);
    Buffer url = {0}, alt = {0}, scratch = {0};
    int status = OK;
    if (p < end && *p == ']') p++;
    else {
        for (;;) {
            Link link;
            if (p >= end || *p != '{' || !(p = read_link(p, end, &link))) {
                status = UNSURE;
                break;
            }
            found->count++;
            /* page_links: a link without a url is skipped; an IMG link counts when its alt is
             * non-empty; any other link may be the page's license. */
            if (link.has_url && link.url.len > 0) {
                int img = 0;
                if (link.has_path) status = span_equals(&link.path, &scratch, IMG_PATH, &img);
                if (status != OK) break;
                if (img && link.has_alt && link.alt.len > 0)
                    status = add_pair(found, base, &link, &url, &alt, &scratch, resolve, unescape);
                else if (!img && !found->license)
                    status = note_license(found, &link, &url);
                if (status != OK) break;
            }
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == ']') {
                p++;
                break;
            }
            status = UNSURE;
            break;
        }
    }
    /* A second Links array somewhere: we cannot tell which one page_links would read. */
    if (status == OK && memmem(p, end - p, LINKS_KEY, sizeof LINKS_KEY - 1)) status = UNSURE;
    /* No license in Links, but maybe one in <head>, which page_links reads then. */
    if (status == OK && !found->license &&
        (memmem(body, at - body, LICENSE_HOST, sizeof LICENSE_HOST - 1) || memmem(p, end - p, LICENSE_HOST, sizeof LICENSE_HOST - 1)))
        status = UNSURE;
    PyMem_Free(url.data);
    PyMem_Free(alt.data);
    PyMem_Free(scratch.data);
    return status;
}

static int read_base(PyObject *prefixes, Base *base) {
    memset(base, 0, sizeof *base);
    if (prefixes == Py_None) return 0;
    PyObject *scheme, *root, *directory;
    if (!PyArg_ParseTuple(prefixes, "UUU;prefixes must be (scheme, root, directory) or None", &scheme, &root, &directory))
        return -1;
    base->scheme = PyUnicode_AsUTF8AndSize(scheme, &base->scheme_len);
    base->root = PyUnicode_AsUTF8AndSize(root, &base->root_len);
    base->directory = PyUnicode_AsUTF8AndSize(directory, &base->directory_len);
    if (!base->scheme || !base->root || !base->directory) {
        PyErr_Clear(); /* a prefix that is not valid UTF-8 (lone surrogates): every join goes to Resolver */
        memset(base, 0, sizeof *base);
        return 0;
    }
    base->fast = 1;
    return 0;
}

PyDoc_STRVAR(img_links_doc,
"img_links(body, prefixes, resolve, unescape) -> (pairs, license, links) | None\n\n"
"The record's IMG links as spark_jobs.wat.page_links reads them, from JSON bytes that are known\n"
"to be valid. pairs: [(absolute url, alt)] of IMG@/src links with a non-empty url and alt;\n"
"license: the decoded url of the first other link that contains the Creative Commons marker\n"
"(not yet resolved), or None; links: how many objects the Links array has, for the caller to\n"
"check against its parser. prefixes: (scheme, root, directory) of the page's base for the common\n"
"relative shapes, or None. resolve(url) joins the other URLs; unescape(text) decodes the HTML\n"
"references this reader leaves to it. None when the bytes are not in the shape it vouches for.");

static PyObject *img_links(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "img_links takes (body, prefixes, resolve, unescape)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    Base base;
    Found found = {PyList_New(0), NULL, 0};
    int status = found.pairs ? OK : FAILED;
    if (status == OK && read_base(args[1], &base) < 0) status = FAILED;
    if (status == OK) status = read_links(view.buf, view.len, &base, args[2], args[3], &found);
    PyBuffer_Release(&view);
    if (status != OK) {
        Py_XDECREF(found.pairs);
        Py_XDECREF(found.license);
        if (status == FAILED) return NULL;
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(NNn)", found.pairs, found.license ? found.license : Py_NewRef(Py_None), found.count);
}

static PyMethodDef methods[] = {
    {"img_links", (PyCFunction)(void (*)(void))img_links, METH_FASTCALL, img_links_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "watlinks", "IMG links of WAT records, read in C.", -1, methods};

PyMODINIT_FUNC PyInit_watlinks(void) { return PyModule_Create(&module); }
