// run/safetensors.h: a small JSON reader/writer and the safetensors file format, both from scratch.
//
// File layout (https://github.com/huggingface/safetensors):
//   8 bytes   little-endian uint64 N, the header length
//   N bytes   JSON object: {"__metadata__": {string: string}, "<name>": {"dtype": "F32",
//             "shape": [..], "data_offsets": [begin, end]}, ...}, padded with spaces to a
//             multiple of 8 so the data that follows stays aligned
//   rest      the raw little-endian tensor bytes; offsets are relative to the start of this part
//
// The writer writes `<path>.tmp`, fsyncs it and renames it over `<path>`: a kill at any moment
// leaves either the old file or the new one, never a torn one. The reader trusts nothing: every
// failure comes back as one line naming the problem, never as an exception or a crash.
//
// Strings: the header we write is pure ASCII. Every byte of a metadata string outside printable
// ASCII is written as \u00XX and read back as that single byte, so any byte string (e.g. the
// vocabulary of a text that is not ASCII) survives a round trip exactly. In Python, such a string
// comes back as str; `s.encode("latin-1")` gives the original bytes.
#pragma once
#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static_assert(std::endian::native == std::endian::little, "safetensors.h assumes a little-endian host");

// ============================================================================================ JSON
namespace json {

struct Value {
    enum class Type { Null, Bool, Number, String, Array, Object };
    Type type = Type::Null;
    bool boolean = false;
    double number = 0;
    std::string text;  // the string's bytes, or a number's original spelling (for exact integers)
    std::vector<Value> array;
    std::vector<std::pair<std::string, Value>> object;  // in file order; keys are unique

    bool is_object() const { return type == Type::Object; }
    bool is_array() const { return type == Type::Array; }
    bool is_string() const { return type == Type::String; }
    bool is_number() const { return type == Type::Number; }
    const Value* get(std::string_view key) const {
        for (const auto& kv : object)
            if (kv.first == key) return &kv.second;
        return nullptr;
    }
    // A non-negative integer written without sign, fraction or exponent (offsets, dimensions).
    bool as_uint64(uint64_t& out) const {
        if (type != Type::Number || text.empty() || text.size() > 19) return false;
        uint64_t v = 0;
        for (char c : text) {
            if (c < '0' || c > '9') return false;
            v = v * 10 + (uint64_t)(c - '0');
        }
        out = v;
        return true;
    }
};

namespace detail {
struct Parser {
    std::string_view s;
    size_t pos = 0;
    std::string error;
    static constexpr int kMaxDepth = 64;  // "[[[[..." must not overflow the stack

    bool fail(const std::string& what) {
        if (error.empty()) error = what + " at byte " + std::to_string(pos);
        return false;
    }
    void skip_ws() {
        while (pos < s.size() && (s[pos] == ' ' || s[pos] == '\t' || s[pos] == '\n' || s[pos] == '\r')) pos++;
    }
    bool literal(const char* word) {
        size_t n = strlen(word);
        if (s.substr(pos, n) != word) return fail("invalid literal");
        pos += n;
        return true;
    }
    static void append_utf8(std::string& out, uint32_t cp) {
        if (cp < 0x80) {
            out += (char)cp;
        } else if (cp < 0x800) {
            out += (char)(0xC0 | (cp >> 6));
            out += (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += (char)(0xE0 | (cp >> 12));
            out += (char)(0x80 | ((cp >> 6) & 0x3F));
            out += (char)(0x80 | (cp & 0x3F));
        } else {
            out += (char)(0xF0 | (cp >> 18));
            out += (char)(0x80 | ((cp >> 12) & 0x3F));
            out += (char)(0x80 | ((cp >> 6) & 0x3F));
            out += (char)(0x80 | (cp & 0x3F));
        }
    }
    bool hex4(uint32_t& out) {
        if (pos + 4 > s.size()) return fail("truncated \\u escape");
        out = 0;
        for (int i = 0; i < 4; i++) {
            char c = s[pos++];
            out <<= 4;
            if (c >= '0' && c <= '9') out |= (uint32_t)(c - '0');
            else if (c >= 'a' && c <= 'f') out |= (uint32_t)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') out |= (uint32_t)(c - 'A' + 10);
            else return fail("bad hex digit in \\u escape");
        }
        return true;
    }
    bool string(std::string& out) {
        if (pos >= s.size() || s[pos] != '"') return fail("expected a string");
        pos++;
        out.clear();
        while (true) {
            if (pos >= s.size()) return fail("unterminated string");
            unsigned char c = (unsigned char)s[pos++];
            if (c == '"') return true;
            if (c < 0x20) return fail("control character in string");
            if (c != '\\') {
                out += (char)c;  // raw bytes (UTF-8 or not) pass through unchanged
                continue;
            }
            if (pos >= s.size()) return fail("unterminated escape");
            char e = s[pos++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    uint32_t cp;
                    if (!hex4(cp)) return false;
                    if (cp <= 0xFF) {  // \u0000..\u00FF is one byte (see the file comment)
                        out += (char)cp;
                    } else if (cp >= 0xD800 && cp <= 0xDBFF) {
                        uint32_t lo;
                        if (s.substr(pos, 2) != "\\u") return fail("unpaired surrogate");
                        pos += 2;
                        if (!hex4(lo)) return false;
                        if (lo < 0xDC00 || lo > 0xDFFF) return fail("unpaired surrogate");
                        append_utf8(out, 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00));
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        return fail("unpaired surrogate");
                    } else {
                        append_utf8(out, cp);
                    }
                    break;
                }
                default: return fail("invalid escape");
            }
        }
    }
    bool number(Value& v) {
        size_t start = pos;
        if (pos < s.size() && s[pos] == '-') pos++;
        if (pos >= s.size() || !isdigit((unsigned char)s[pos])) return fail("invalid number");
        if (s[pos] == '0') pos++;
        else while (pos < s.size() && isdigit((unsigned char)s[pos])) pos++;
        if (pos < s.size() && s[pos] == '.') {
            pos++;
            if (pos >= s.size() || !isdigit((unsigned char)s[pos])) return fail("invalid number");
            while (pos < s.size() && isdigit((unsigned char)s[pos])) pos++;
        }
        if (pos < s.size() && (s[pos] == 'e' || s[pos] == 'E')) {
            pos++;
            if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) pos++;
            if (pos >= s.size() || !isdigit((unsigned char)s[pos])) return fail("invalid number");
            while (pos < s.size() && isdigit((unsigned char)s[pos])) pos++;
        }
        v.type = Value::Type::Number;
        v.text = std::string(s.substr(start, pos - start));
        v.number = strtod(v.text.c_str(), nullptr);
        return true;
    }
    bool value(Value& v, int depth) {
        if (depth > kMaxDepth) return fail("nesting too deep");
        skip_ws();
        if (pos >= s.size()) return fail("unexpected end of input");
        char c = s[pos];
        if (c == '{') {
            pos++;
            v.type = Value::Type::Object;
            skip_ws();
            if (pos < s.size() && s[pos] == '}') { pos++; return true; }
            while (true) {
                skip_ws();
                std::string key;
                if (!string(key)) return false;
                if (v.get(key)) return fail("duplicate key \"" + key + "\"");
                skip_ws();
                if (pos >= s.size() || s[pos] != ':') return fail("expected ':'");
                pos++;
                v.object.emplace_back(std::move(key), Value{});
                if (!value(v.object.back().second, depth + 1)) return false;
                skip_ws();
                if (pos < s.size() && s[pos] == ',') { pos++; continue; }
                if (pos < s.size() && s[pos] == '}') { pos++; return true; }
                return fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            pos++;
            v.type = Value::Type::Array;
            skip_ws();
            if (pos < s.size() && s[pos] == ']') { pos++; return true; }
            while (true) {
                v.array.emplace_back();
                if (!value(v.array.back(), depth + 1)) return false;
                skip_ws();
                if (pos < s.size() && s[pos] == ',') { pos++; continue; }
                if (pos < s.size() && s[pos] == ']') { pos++; return true; }
                return fail("expected ',' or ']'");
            }
        }
        if (c == '"') { v.type = Value::Type::String; return string(v.text); }
        if (c == 't') { v.type = Value::Type::Bool; v.boolean = true; return literal("true"); }
        if (c == 'f') { v.type = Value::Type::Bool; v.boolean = false; return literal("false"); }
        if (c == 'n') { v.type = Value::Type::Null; return literal("null"); }
        return number(v);
    }
};
}  // namespace detail

// Parses one JSON document (surrounding whitespace allowed). On failure: false and a short
// error with the byte offset, e.g. "expected ':' at byte 17".
inline bool parse(std::string_view text, Value& out, std::string& error) {
    detail::Parser p;
    p.s = text;
    out = Value{};
    if (!p.value(out, 0)) { error = p.error; return false; }
    p.skip_ws();
    if (p.pos != text.size()) { p.fail("trailing characters"); error = p.error; return false; }
    return true;
}

// A JSON string literal for any byte string: pure ASCII out, bytes >= 0x80 and control
// characters as \u00XX (read back as the same single byte by parse()).
inline std::string quote(std::string_view bytes) {
    std::string out = "\"";
    for (unsigned char c : bytes) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20 || c >= 0x7F) {
                    char buf[8];
                    snprintf(buf, sizeof buf, "\\u%04x", (unsigned)c);
                    out += buf;
                } else {
                    out += (char)c;
                }
        }
    }
    return out + "\"";
}

// A number as JSON: the shortest text that reads back to the same double; NaN/inf (which JSON
// cannot spell) become null.
inline std::string number(double x) {
    if (x != x || x - x != 0) return "null";
    char buf[32];
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(buf, sizeof buf, "%.*g", precision, x);
        if (strtod(buf, nullptr) == x) break;
    }
    return buf;
}

}  // namespace json

// ===================================================================================== safetensors
namespace safetensors {

// dtype name -> bytes per element; the two this project stores.
inline int dtype_size(std::string_view dtype) {
    if (dtype == "F32" || dtype == "I32") return 4;
    return 0;
}

struct Tensor {
    std::string name;
    std::string dtype;             // "F32" or "I32"
    std::vector<int64_t> shape;    // empty = scalar (one element)
    std::vector<unsigned char> data;

    int64_t numel() const {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        return n;
    }
    std::vector<float> floats() const {
        std::vector<float> out(data.size() / 4);
        if (!out.empty()) memcpy(out.data(), data.data(), out.size() * 4);
        return out;
    }
    std::vector<int32_t> ints() const {
        std::vector<int32_t> out(data.size() / 4);
        if (!out.empty()) memcpy(out.data(), data.data(), out.size() * 4);
        return out;
    }
};

struct File {
    std::map<std::string, std::string> metadata;
    std::vector<Tensor> tensors;  // write order; after a read: the header's order

    const Tensor* find(std::string_view name) const {
        for (const auto& t : tensors)
            if (t.name == name) return &t;
        return nullptr;
    }
    const std::string* meta(const std::string& key) const {
        auto it = metadata.find(key);
        return it == metadata.end() ? nullptr : &it->second;
    }
    Tensor& add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, const void* src) {
        Tensor t;
        t.name = name;
        t.dtype = dtype;
        t.shape = std::move(shape);
        t.data.resize((size_t)t.numel() * (size_t)dtype_size(dtype));
        if (!t.data.empty()) memcpy(t.data.data(), src, t.data.size());
        tensors.push_back(std::move(t));
        return tensors.back();
    }
    Tensor& add_f32(const std::string& name, std::vector<int64_t> shape, const float* src) {
        return add(name, "F32", std::move(shape), src);
    }
    Tensor& add_i32(const std::string& name, std::vector<int64_t> shape, const int32_t* src) {
        return add(name, "I32", std::move(shape), src);
    }
};

// The header JSON (unpadded) for a set of tensors laid out back to back in order.
inline std::string make_header(const File& f) {
    std::string h = "{";
    bool first = true;
    if (!f.metadata.empty()) {
        h += "\"__metadata__\":{";
        for (const auto& [k, v] : f.metadata) {
            if (!first) h += ",";
            h += json::quote(k) + ":" + json::quote(v);
            first = false;
        }
        h += "}";
        first = false;
    }
    uint64_t offset = 0;
    for (const auto& t : f.tensors) {
        if (!first) h += ",";
        first = false;
        h += json::quote(t.name) + ":{\"dtype\":" + json::quote(t.dtype) + ",\"shape\":[";
        for (size_t i = 0; i < t.shape.size(); i++) {
            if (i) h += ',';
            h += std::to_string(t.shape[i]);
        }
        h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.data.size()) + "]}";
        offset += t.data.size();
    }
    return h + "}";
}

namespace detail {
inline bool write_all(int fd, const void* p, size_t n) {
    const char* c = (const char*)p;
    while (n > 0) {
        ssize_t w = ::write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        c += w;
        n -= (size_t)w;
    }
    return true;
}
inline std::string parent_dir(const std::string& path) {
    size_t slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}
}  // namespace detail

// Writes `bytes` to `path` atomically: `<path>.tmp`, fsync, rename, fsync of the directory.
// On failure the temporary is removed and `path` is untouched.
inline bool write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& parts,
                              std::string& error) {
    std::string tmp = path + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        error = "cannot create " + tmp + ": " + strerror(errno);
        return false;
    }
    bool ok = true;
    for (const auto& [p, n] : parts) ok = ok && detail::write_all(fd, p, n);
    if (!ok || ::fsync(fd) != 0) {
        error = "cannot write " + tmp + ": " + strerror(errno);
        ::close(fd);
        ::unlink(tmp.c_str());
        return false;
    }
    if (::close(fd) != 0) {
        error = "cannot write " + tmp + ": " + strerror(errno);
        ::unlink(tmp.c_str());
        return false;
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        error = "cannot rename " + tmp + " to " + path + ": " + strerror(errno);
        ::unlink(tmp.c_str());
        return false;
    }
    // The rename itself is durable only once the directory entry is on disk.
    int dfd = ::open(detail::parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
    return true;
}

inline bool write(const std::string& path, const File& f, std::string& error) {
    for (size_t i = 0; i < f.tensors.size(); i++) {
        const Tensor& t = f.tensors[i];
        if (t.name.empty() || t.name == "__metadata__") { error = "invalid tensor name \"" + t.name + "\""; return false; }
        if (dtype_size(t.dtype) == 0) { error = "tensor " + t.name + ": unsupported dtype " + t.dtype; return false; }
        for (int64_t d : t.shape)
            if (d < 0) { error = "tensor " + t.name + ": negative dimension"; return false; }
        if ((int64_t)t.data.size() != t.numel() * dtype_size(t.dtype)) {
            error = "tensor " + t.name + ": data size does not match its shape";
            return false;
        }
        for (size_t j = 0; j < i; j++)
            if (f.tensors[j].name == t.name) { error = "duplicate tensor name " + t.name; return false; }
    }
    std::string header = make_header(f);
    while (header.size() % 8 != 0) header += ' ';
    uint64_t n = header.size();
    std::vector<std::pair<const void*, size_t>> parts = {{&n, 8}, {header.data(), header.size()}};
    for (const auto& t : f.tensors) parts.push_back({t.data.data(), t.data.size()});
    return write_file_atomic(path, parts, error);
}

// Reads and validates `path`. Every problem is one line naming it, prefixed by the path.
inline bool read(const std::string& path, File& out, std::string& error) {
    out = File{};
    auto bad = [&](const std::string& what) {
        error = path + ": " + what;
        return false;
    };
    FILE* fp = fopen(path.c_str(), "rb");
    if (!fp) return bad(std::string("cannot open: ") + strerror(errno));
    struct FileCloser { FILE* f; ~FileCloser() { fclose(f); } } closer{fp};
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) return bad(std::string("cannot stat: ") + strerror(errno));
    if (S_ISDIR(st.st_mode)) return bad("is a directory, not a safetensors file");
    const uint64_t file_size = (uint64_t)st.st_size;
    if (file_size < 8) return bad("not a safetensors file (" + std::to_string(file_size) + " bytes, shorter than the 8-byte header length)");
    uint64_t n = 0;
    if (fread(&n, 8, 1, fp) != 1) return bad("cannot read the header length");
    // The reference implementation's limit; anything bigger is not a header we wrote.
    const uint64_t kMaxHeader = 100000000;
    if (n > kMaxHeader || n > file_size - 8)
        return bad("not a safetensors file (header length " + std::to_string(n) + " does not fit in the " +
                   std::to_string(file_size) + "-byte file)");
    if (n < 2) return bad("not a safetensors file (header of " + std::to_string(n) + " bytes)");
    std::string header(n, '\0');
    if (fread(header.data(), 1, n, fp) != n) return bad("cannot read the header");
    if (header[0] != '{') return bad("not a safetensors file (header does not start with '{')");
    json::Value root;
    std::string jerr;
    if (!json::parse(header, root, jerr)) return bad("header is not valid JSON: " + jerr);
    if (!root.is_object()) return bad("header is not a JSON object");

    const uint64_t data_size = file_size - 8 - n;
    struct Span { uint64_t begin, end; size_t index; };
    std::vector<Span> spans;
    for (const auto& [name, v] : root.object) {
        if (name == "__metadata__") {
            if (!v.is_object()) return bad("__metadata__ is not an object");
            for (const auto& [k, s] : v.object) {
                if (!s.is_string()) return bad("__metadata__ value of \"" + k + "\" is not a string");
                out.metadata[k] = s.text;
            }
            continue;
        }
        if (!v.is_object()) return bad("entry " + name + " is not an object");
        const json::Value* dtype = v.get("dtype");
        const json::Value* shape = v.get("shape");
        const json::Value* offsets = v.get("data_offsets");
        if (!dtype || !dtype->is_string()) return bad("tensor " + name + ": missing or invalid dtype");
        if (dtype_size(dtype->text) == 0) return bad("tensor " + name + ": unsupported dtype " + dtype->text);
        if (!shape || !shape->is_array()) return bad("tensor " + name + ": missing or invalid shape");
        if (!offsets || !offsets->is_array() || offsets->array.size() != 2)
            return bad("tensor " + name + ": missing or invalid data_offsets");
        Tensor t;
        t.name = name;
        t.dtype = dtype->text;
        uint64_t numel = 1;
        for (const auto& d : shape->array) {
            uint64_t dim;
            if (!d.as_uint64(dim) || dim > (1ull << 40)) return bad("tensor " + name + ": invalid dimension in shape");
            t.shape.push_back((int64_t)dim);
            if (dim != 0 && numel > data_size / dim) numel = data_size + 1;  // saturate: too big for the file
            else numel *= dim;
        }
        uint64_t begin, end;
        if (!offsets->array[0].as_uint64(begin) || !offsets->array[1].as_uint64(end))
            return bad("tensor " + name + ": data_offsets are not non-negative integers");
        if (begin > end || end > data_size)
            return bad("tensor " + name + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                       "] out of range (data section is " + std::to_string(data_size) + " bytes)");
        if (numel > data_size || end - begin != numel * (uint64_t)dtype_size(t.dtype))
            return bad("tensor " + name + ": data_offsets span " + std::to_string(end - begin) +
                       " bytes but dtype and shape need " + (numel > data_size ? std::string("more") : std::to_string(numel * 4)));
        spans.push_back({begin, end, out.tensors.size()});
        out.tensors.push_back(std::move(t));
    }
    // The tensors must tile the data section exactly: no overlap, no hole, no trailing bytes.
    std::vector<Span> sorted = spans;
    std::sort(sorted.begin(), sorted.end(), [](const Span& a, const Span& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t at = 0;
    for (const Span& s : sorted) {
        if (s.begin != at)
            return bad("tensor " + out.tensors[s.index].name + ": data " + (s.begin < at ? "overlaps another tensor" : "leaves a gap"));
        at = s.end;
    }
    if (at != data_size)
        return bad("data section is " + std::to_string(data_size) + " bytes but the tensors cover " + std::to_string(at) +
                   " (truncated or trailing bytes)");
    for (const Span& s : sorted) {
        Tensor& t = out.tensors[s.index];
        t.data.resize(s.end - s.begin);
        if (!t.data.empty() && fread(t.data.data(), 1, t.data.size(), fp) != t.data.size())
            return bad("cannot read the data of tensor " + t.name);
    }
    return true;
}

}  // namespace safetensors
