// simt/cuda_to_cpp.h: the source rewrite that lets g++ compile CUDA's two non-C++ spellings.
//
// The kernel headers are written in plain CUDA. Two of its spellings are not C++, so for the CPU
// (g++) build every project source is copied through this rewrite first (the Makefile's mirror
// tree, $(BUILD)/src); nvcc always compiles the original files.
//
//   kernel<<<grid, block, shared_bytes, stream>>>(args...)
//     -> ::simt::launch("kernel", kernel, grid, block, shared_bytes, stream)(args...)
//   extern __shared__ __align__(16) float buf[];
//     -> float* buf = ::simt::dynamic_shared<float, 16>();
//   __shared__ float tile[32][33];
//     -> float (&tile)[32][33] = ::simt::static_shared<float[32][33]>();
//
// (static shared memory becomes the block's own copy, poisoned at every block start like dynamic
// shared memory; see simt::static_shared).
//
// `kernel` may be a name, a qualified name (ns::k), a template-id (k<float, 4>) or a parenthesized
// expression; the launch may span lines; the 2- and 3-argument configurations work as in CUDA
// (simt::launch has defaults). Inside a function-like #define, a launched macro parameter is named
// by stringizing it (#kernel). Everything else is copied byte for byte: comments, string and
// character literals (raw strings included) are never rewritten, `>>` / `>>>` closing template
// argument lists outside a launch are left alone, and no line is added or removed, so after the
// `#line 1 "<original path>"` the rewrite puts on top, compiler errors, __FILE__, __LINE__ and
// std::source_location name the original file and line.
//
// A launch or shared declaration the rewrite does not understand is an error (file:line:
// message), never passed through silently; the build stops there.
#pragma once

#include <algorithm>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace cuda_to_cpp {

struct Error {
    int line;             // 1-based line of the input
    std::string message;
};

struct Result {
    std::string text;             // the rewritten source (with the #line directive on top)
    std::vector<Error> errors;    // empty on success
    int launches = 0;             // launches rewritten
    int shared_arrays = 0;        // extern __shared__ declarations rewritten
    int static_shared = 0;        // static __shared__ declarations rewritten
};

namespace detail {

enum class Kind { Space, Comment, String, Number, Identifier, Punct };

struct Token {
    Kind kind;
    size_t begin, end;   // byte range in the source
    int line;            // line of the first byte
    bool directive;      // part of a preprocessor directive (a # line and its continuations)
};

inline bool is_ident_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '$'; }
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
inline bool is_ident_char(char c) { return is_ident_start(c) || is_digit(c); }

// Splits the source into tokens that cover every byte. Lexing errors (an unterminated comment or
// literal) are reported; the remaining bytes become one token so the copy stays exact.
inline std::vector<Token> tokenize(std::string_view s, std::vector<Error>& errors) {
    std::vector<Token> tokens;
    size_t i = 0;
    int line = 1;
    bool at_line_start = true;  // only whitespace since the last newline (outside a directive)
    bool in_directive = false;
    auto count_lines = [&](size_t from, size_t to) {
        for (size_t k = from; k < to; k++) line += s[k] == '\n';
    };
    while (i < s.size()) {
        const size_t begin = i;
        const int begin_line = line;
        const char c = s[i];
        Kind kind;
        if (c == '\\' && i + 1 < s.size() && (s[i + 1] == '\n' || (s[i + 1] == '\r' && i + 2 < s.size() && s[i + 2] == '\n'))) {
            i += s[i + 1] == '\n' ? 2 : 3;  // a line splice: the directive (if any) goes on
            kind = Kind::Space;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
            while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == '\f' || s[i] == '\v')) {
                if (s[i] == '\n') {
                    // a newline ends a directive; keep it in a token of its own so the flag is exact
                    if (i > begin) break;
                    i++;
                    in_directive = false;
                    at_line_start = true;
                    break;
                }
                i++;
            }
            kind = Kind::Space;
        } else if (c == '/' && i + 1 < s.size() && s[i + 1] == '/') {
            i += 2;
            while (i < s.size() && s[i] != '\n') {
                if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == '\n') i++;  // a spliced line comment goes on
                i++;
            }
            kind = Kind::Comment;
        } else if (c == '/' && i + 1 < s.size() && s[i + 1] == '*') {
            const size_t close = s.find("*/", i + 2);
            if (close == std::string_view::npos) {
                errors.push_back({begin_line, "unterminated /* comment"});
                i = s.size();
            } else {
                i = close + 2;
            }
            kind = Kind::Comment;
        } else if (is_ident_start(c) || c == '"' || c == '\'') {
            // identifiers, and literals with their encoding prefix (u8"", L'', R"d(...)d", ...)
            size_t j = i;
            while (j < s.size() && is_ident_char(s[j])) j++;
            const std::string_view word = s.substr(i, j - i);
            const bool prefix = word.empty() || word == "u8" || word == "u" || word == "U" || word == "L";
            const bool raw_prefix = word == "R" || word == "u8R" || word == "uR" || word == "UR" || word == "LR";
            if (j < s.size() && s[j] == '"' && raw_prefix) {
                const size_t open = s.find('(', j + 1);
                const size_t newline = s.find('\n', j + 1);
                if (open == std::string_view::npos || (newline != std::string_view::npos && newline < open)) {
                    errors.push_back({begin_line, "malformed raw string literal"});
                    i = s.size();
                } else {
                    const std::string close = ")" + std::string(s.substr(j + 1, open - j - 1)) + "\"";
                    const size_t end = s.find(close, open + 1);
                    if (end == std::string_view::npos) {
                        errors.push_back({begin_line, "unterminated raw string literal"});
                        i = s.size();
                    } else {
                        i = end + close.size();
                    }
                }
                kind = Kind::String;
            } else if (j < s.size() && (s[j] == '"' || s[j] == '\'') && prefix) {
                const char quote = s[j];
                size_t k = j + 1;
                while (k < s.size() && s[k] != quote && s[k] != '\n') k += s[k] == '\\' ? 2 : 1;
                if (k >= s.size() || s[k] != quote) {
                    // an apostrophe in a directive's text (#error don't ...) is not a literal
                    if (!in_directive) errors.push_back({begin_line, "unterminated string or character literal"});
                    i = k >= s.size() ? s.size() : k;
                } else {
                    i = k + 1;
                }
                kind = Kind::String;
            } else {
                i = j;
                kind = Kind::Identifier;
            }
        } else if (is_digit(c) || (c == '.' && i + 1 < s.size() && is_digit(s[i + 1]))) {
            // a pp-number: digits, letters, '.', digit separators ', and e+ / p- exponents
            i++;
            while (i < s.size()) {
                const char d = s[i];
                if ((d == '+' || d == '-') && (s[i - 1] == 'e' || s[i - 1] == 'E' || s[i - 1] == 'p' || s[i - 1] == 'P')) {
                    i++;
                } else if (d == '\'' && i + 1 < s.size() && is_ident_char(s[i + 1])) {
                    i += 2;
                } else if (is_ident_char(d) || d == '.') {
                    i++;
                } else {
                    break;
                }
            }
            kind = Kind::Number;
        } else if (c == ':' && i + 1 < s.size() && s[i + 1] == ':') {
            i += 2;
            kind = Kind::Punct;
        } else {
            if (c == '#' && at_line_start) in_directive = true;
            i++;
            kind = Kind::Punct;
        }
        if (kind != Kind::Space && kind != Kind::Comment) at_line_start = false;
        const bool newline_token = kind == Kind::Space && s[begin] == '\n';
        tokens.push_back({kind, begin, i, begin_line, newline_token ? false : in_directive});
        count_lines(begin, i);
    }
    return tokens;
}

}  // namespace detail

// Rewrites one source. `path` is the name the #line directive gives (the original file).
inline Result rewrite(std::string_view src, std::string_view path) {
    using namespace detail;
    Result result;
    std::vector<Token> t = tokenize(src, result.errors);
    const int n = (int)t.size();
    auto text = [&](int k) { return src.substr(t[k].begin, t[k].end - t[k].begin); };
    auto significant = [&](int k) { return t[k].kind != Kind::Space && t[k].kind != Kind::Comment; };
    auto is_punct = [&](int k, std::string_view p) { return k >= 0 && k < n && t[k].kind == Kind::Punct && text(k) == p; };
    auto is_word = [&](int k, std::string_view w) { return k >= 0 && k < n && t[k].kind == Kind::Identifier && text(k) == w; };
    auto next = [&](int k) {  // next significant token after k (n if none)
        for (k++; k < n && !significant(k); k++) {}
        return k;
    };
    auto prev = [&](int k) {  // previous significant token before k (-1 if none)
        for (k--; k >= 0 && !significant(k); k--) {}
        return k;
    };
    // three '<' (or '>') with nothing between them
    auto triple = [&](int k, char c) {
        const std::string_view p(&c, 1);
        return k + 2 < n && is_punct(k, p) && is_punct(k + 1, p) && is_punct(k + 2, p) &&
               t[k + 1].begin == t[k].end && t[k + 2].begin == t[k + 1].end;
    };
    auto error = [&](int k, std::string message) { result.errors.push_back({t[k].line, std::move(message)}); };
    static const char* const keywords[] = {
        "return", "case", "else", "do", "if", "while", "for", "switch", "sizeof", "new", "delete", "throw",
        "co_return", "co_yield", "co_await", "operator", "template", "typename", "decltype", "const", "auto"};
    auto is_keyword = [&](int k) {
        for (const char* w : keywords)
            if (text(k) == w) return true;
        return false;
    };

    // Replacements: byte range [begin, end) of the source becomes `with`.
    struct Edit {
        size_t begin, end;
        std::string with;
    };
    std::vector<Edit> edits;

    // Function-like macro parameters of the directive being read (for #kernel in a #define).
    std::vector<std::string_view> macro_params;
    int macro_params_line = -1;

    // extern __shared__ arrays seen so far: name -> (type, line)
    std::map<std::string, std::pair<std::string, int>> shared_types;

    // Brace scopes outside directives: true for a namespace (or extern "C") body.
    std::vector<bool> namespace_scope;

    for (int k = 0; k < n; k++) {
        if (!significant(k)) continue;

        // ---- a #define's parameter list
        if (t[k].directive && is_punct(k, "#") && (prev(k) < 0 || !t[prev(k)].directive || t[prev(k)].line != t[k].line)) {
            macro_params.clear();
            macro_params_line = -1;
            const int d = next(k);
            if (is_word(d, "define")) {
                const int name = next(d);
                if (name < n && t[name].kind == Kind::Identifier && is_punct(name + 1, "(")) {
                    macro_params_line = t[k].line;
                    for (int p = name + 2; p < n && t[p].directive && !is_punct(p, ")"); p++)
                        if (t[p].kind == Kind::Identifier) macro_params.push_back(text(p));
                }
            }
        }

        // ---- brace scopes (for extern __shared__, which must be inside a function)
        if (!t[k].directive && is_punct(k, "{")) {
            int p = prev(k);
            while (p >= 0 && (t[p].kind == Kind::Identifier || is_punct(p, "::")) && !is_word(p, "namespace")) p = prev(p);
            const bool ns = is_word(p, "namespace") || (p >= 0 && t[p].kind == Kind::String && is_word(prev(p), "extern") &&
                                                        prev(k) == p);
            namespace_scope.push_back(ns);
            continue;
        }
        if (!t[k].directive && is_punct(k, "}")) {
            if (!namespace_scope.empty()) namespace_scope.pop_back();
            continue;
        }

        // ---- kernel<<<config>>>(args)
        if (triple(k, '<')) {
            const int open = k;
            // the kernel expression: [::] name [<template args>] {:: name [<template args>]} or ( ... )
            int e = prev(open);
            int kernel_begin = -1;
            bool single_identifier = false;
            if (is_word(e, "operator")) {  // operator<< <T>(...): not a launch
                k = open + 2;
                continue;
            }
            if (is_punct(e, ")")) {
                int depth = 0, p = e;
                for (; p >= 0; p--) {
                    if (!significant(p)) continue;
                    if (is_punct(p, ")")) depth++;
                    if (is_punct(p, "(")) depth--;
                    if (depth == 0) break;
                }
                // f(x)<<<...>>> would launch what f returns: not a form this rewrite takes apart
                const int before = p >= 0 ? prev(p) : -1;
                const bool call = before >= 0 && ((t[before].kind == Kind::Identifier && !is_keyword(before)) ||
                                                  is_punct(before, ">") || is_punct(before, "]") || is_punct(before, ")"));
                if (p >= 0 && !call) kernel_begin = p;
            } else {
                int p = e;
                while (p >= 0) {
                    if (is_punct(p, ">")) {  // template arguments: back to the matching '<'
                        int depth = 0, paren = 0, q = p;
                        for (; q >= 0; q--) {
                            if (!significant(q) || t[q].directive != t[p].directive) continue;
                            if (is_punct(q, ")") || is_punct(q, "]")) paren++;
                            if (is_punct(q, "(") || is_punct(q, "[")) paren--;
                            if (paren == 0 && is_punct(q, ">")) depth++;
                            if (paren == 0 && is_punct(q, "<")) depth--;
                            if (depth == 0 || is_punct(q, ";") || is_punct(q, "{") || is_punct(q, "}")) break;
                        }
                        if (q < 0 || !is_punct(q, "<")) break;
                        p = prev(q);
                    }
                    if (p < 0 || t[p].kind != Kind::Identifier || is_keyword(p)) break;
                    kernel_begin = p;
                    single_identifier = kernel_begin == e;
                    const int q = prev(p);
                    if (!is_punct(q, "::")) break;
                    kernel_begin = q;  // a leading or inner ::
                    single_identifier = false;
                    p = prev(q);
                    if (p < 0 || !(t[p].kind == Kind::Identifier || is_punct(p, ">")) || is_keyword(p)) break;
                }
                // a member access (obj.kernel, p->kernel) is not a kernel
                const int before = kernel_begin >= 0 ? prev(kernel_begin) : -1;
                if (is_punct(before, ".") || (is_punct(before, ">") && before > 0 && is_punct(before - 1, "-")))
                    kernel_begin = -1;
            }
            if (kernel_begin < 0) {
                error(open, "cuda_to_cpp: kernel launch not understood: '<<<' must follow a kernel name, a template-id "
                            "or a parenthesized kernel expression");
                k = open + 2;
                continue;
            }
            // the configuration, up to the first >>> outside parentheses, brackets and braces
            int depth = 0, close = -1;
            for (int p = open + 3; p < n; p++) {
                if (!significant(p)) continue;
                if (t[p].directive != t[open].directive) break;
                if (is_punct(p, "(") || is_punct(p, "[") || is_punct(p, "{")) depth++;
                if (is_punct(p, ")") || is_punct(p, "]") || is_punct(p, "}")) {
                    if (--depth < 0) break;
                }
                if (is_punct(p, ";")) break;
                if (depth == 0 && triple(p, '>')) {
                    close = p;
                    break;
                }
            }
            if (close < 0) {
                error(open, "cuda_to_cpp: kernel launch not understood: no matching '>>>' for this '<<<'");
                k = open + 2;
                continue;
            }
            if (next(open + 2) == close) {
                error(open, "cuda_to_cpp: kernel launch with an empty <<<>>> configuration");
                k = close + 2;
                continue;
            }
            if (!is_punct(next(close + 2), "(")) {
                error(close, "cuda_to_cpp: kernel launch not understood: '>>>' must be followed by the argument list '('");
                k = close + 2;
                continue;
            }
            // the kernel's name for messages: its tokens with single spaces, comments dropped
            std::string name;
            for (int p = kernel_begin; p < open; p++) {
                if (!significant(p)) continue;
                if (!name.empty() && !significant(p - 1)) name += ' ';
                name += text(p);
            }
            const bool stringize = t[open].directive && single_identifier && t[open].line >= macro_params_line &&
                                   macro_params_line >= 0 &&
                                   [&] {
                                       for (auto p : macro_params)
                                           if (p == name) return true;
                                       return false;
                                   }();
            const std::string quoted = stringize ? "#" + name : "\"" + name + "\"";
            edits.push_back({t[kernel_begin].begin, t[kernel_begin].begin, "::simt::launch(" + quoted + ", "});
            edits.push_back({t[open].begin, t[open + 2].end, ", "});
            edits.push_back({t[close].begin, t[close + 2].end, ")"});
            result.launches++;
            k = close + 2;
            continue;
        }

        // ---- static shared memory: __shared__ [attributes] T name[N]...;  (or a scalar)
        if (is_word(k, "__shared__") && !t[k].directive && !is_word(prev(k), "extern")) {
            std::string type, alignment, dims;
            int p = next(k), name = -1, semicolon = -1;
            bool ok = true;
            for (; p < n; p = next(p)) {
                if (is_word(p, "__align__") || is_word(p, "alignas")) {
                    const int paren = next(p);
                    int depth = 0, q = paren;
                    for (; q < n && is_punct(paren, "("); q++) {
                        if (is_punct(q, "(")) depth++;
                        if (is_punct(q, ")") && --depth == 0) break;
                    }
                    if (!is_punct(paren, "(") || q >= n) {
                        ok = false;
                        break;
                    }
                    alignment.clear();
                    for (int a = paren + 1; a < q; a++)
                        if (significant(a)) alignment += std::string(text(a)) + (t[a + 1].kind == Kind::Space ? " " : "");
                    while (!alignment.empty() && alignment.back() == ' ') alignment.pop_back();
                    p = q;
                    continue;
                }
                // the declarator's name: an identifier followed by '[' or ';'
                if (t[p].kind == Kind::Identifier && !type.empty() && (is_punct(next(p), "[") || is_punct(next(p), ";"))) {
                    name = p;
                    int q = next(p);
                    while (is_punct(q, "[")) {
                        int depth = 0, r = q;
                        for (; r < n; r++) {
                            if (is_punct(r, "[")) depth++;
                            if (is_punct(r, "]") && --depth == 0) break;
                            if (is_punct(r, ";")) break;
                        }
                        if (r >= n || !is_punct(r, "]") || next(q) == r) {
                            ok = false;
                            break;
                        }
                        for (int a = q; a <= r; a++) {
                            if (!significant(a)) continue;
                            if (a > q && !significant(a - 1) && dims.back() != '[' && !is_punct(a, "]")) dims += ' ';
                            dims += text(a);
                        }
                        q = next(r);
                    }
                    if (ok && is_punct(q, ";")) semicolon = q;
                    else ok = false;
                    break;
                }
                if (t[p].kind != Kind::Identifier && !is_punct(p, "::") && !is_punct(p, "<") && !is_punct(p, ">") &&
                    !is_punct(p, ",") && t[p].kind != Kind::Number) {
                    ok = false;
                    break;
                }
                if (!type.empty() && t[p - 1].kind == Kind::Space) type += ' ';
                type += text(p);
            }
            if (!ok || name < 0 || type.empty()) {
                error(k, "cuda_to_cpp: __shared__ declaration not understood: write `__shared__ [__align__(N)] T name[N]...;` "
                         "(one variable per declaration)");
                continue;
            }
            if (namespace_scope.empty() || namespace_scope.back()) {
                error(k, "cuda_to_cpp: __shared__ outside a function: the CPU build supports it inside a kernel (or a "
                         "__device__ function) only");
                k = semicolon;
                continue;
            }
            const std::string full = type + dims;
            std::string with = dims.empty() ? type + "& " + std::string(text(name))
                                            : type + " (&" + std::string(text(name)) + ")" + dims;
            with += " = ::simt::static_shared<" + full + (alignment.empty() ? "" : ", " + alignment) + ">();";
            for (size_t b = t[k].begin; b < t[semicolon].end; b++)
                if (src[b] == '\n') with += "\n";
            edits.push_back({t[k].begin, t[semicolon].end, with});
            result.static_shared++;
            k = semicolon;
            continue;
        }

        // ---- extern __shared__ [attributes] T name[];
        if (is_word(k, "extern") && is_word(next(k), "__shared__")) {
            const int shared = next(k);
            std::string type, alignment;
            int p = next(shared), name = -1, semicolon = -1;
            bool ok = true;
            for (; p < n; p = next(p)) {
                if (is_word(p, "__align__") || is_word(p, "alignas") || is_word(p, "__attribute__")) {
                    const int paren = next(p);
                    if (!is_punct(paren, "(")) {
                        ok = false;
                        break;
                    }
                    int depth = 0, q = paren;
                    for (; q < n; q++) {
                        if (is_punct(q, "(")) depth++;
                        if (is_punct(q, ")") && --depth == 0) break;
                    }
                    if (q >= n) {
                        ok = false;
                        break;
                    }
                    if (!is_word(p, "__attribute__")) {
                        alignment.clear();
                        for (int a = paren + 1; a < q; a++)
                            if (significant(a)) alignment += std::string(text(a)) + (t[a + 1].kind == Kind::Space ? " " : "");
                        while (!alignment.empty() && alignment.back() == ' ') alignment.pop_back();
                    }
                    p = q;
                    continue;
                }
                if (t[p].kind == Kind::Identifier && is_punct(next(p), "[")) {
                    name = p;
                    const int bracket = next(p), end = next(bracket);
                    if (!is_punct(end, "]")) {
                        error(k, "cuda_to_cpp: extern __shared__ arrays have no size: write `extern __shared__ T name[];`");
                        ok = false;
                    } else if (!is_punct(next(end), ";")) {
                        error(k, "cuda_to_cpp: extern __shared__ declares one array: `extern __shared__ T name[];`");
                        ok = false;
                    } else {
                        semicolon = next(end);
                    }
                    break;
                }
                if (t[p].kind != Kind::Identifier && !is_punct(p, "::") && !is_punct(p, "<") && !is_punct(p, ">") &&
                    !is_punct(p, ",") && t[p].kind != Kind::Number) {
                    ok = false;
                    break;
                }
                if (!type.empty() && t[p - 1].kind == Kind::Space) type += ' ';
                type += text(p);
            }
            if (ok && (name < 0 || type.empty())) ok = false;
            if (!ok) {
                if (semicolon < 0 && (result.errors.empty() || result.errors.back().line != t[k].line))
                    error(k, "cuda_to_cpp: extern __shared__ not understood: write `extern __shared__ [__align__(N)] T name[];`");
                k = shared;
                continue;
            }
            if (!t[k].directive && (namespace_scope.empty() || namespace_scope.back())) {
                error(k, "cuda_to_cpp: extern __shared__ outside a function: the CPU build supports it inside a kernel "
                         "(or a __device__ function) only");
                k = semicolon;
                continue;
            }
            // nvcc gives every extern __shared__ array of a translation unit external linkage: one
            // name with two types is an error there, so it is one here too (within this file)
            const auto [seen, first] = shared_types.try_emplace(std::string(text(name)), type, t[k].line);
            if (!first && seen->second.first != type) {
                error(k, "cuda_to_cpp: extern __shared__ '" + seen->first + "' was declared as " + seen->second.first +
                             " on line " + std::to_string(seen->second.second) + " and as " + type +
                             " here; nvcc rejects two types for one name, so give each its own name");
                k = semicolon;
                continue;
            }
            // the declaration becomes one statement; its line breaks are kept at the end
            std::string with = type + "* " + std::string(text(name)) + " = ::simt::dynamic_shared<" + type +
                               (alignment.empty() ? "" : ", " + alignment) + ">();";
            for (size_t b = t[k].begin; b < t[semicolon].end; b++)
                if (src[b] == '\n') with += t[k].directive ? " \\\n" : "\n";
            edits.push_back({t[k].begin, t[semicolon].end, with});
            result.shared_arrays++;
            k = semicolon;
            continue;
        }
    }

    // #line first: the next line is line 1 of the original file
    std::string quoted_path;
    for (char c : path) {
        if (c == '"' || c == '\\') quoted_path += '\\';
        quoted_path += c;
    }
    result.text = "#line 1 \"" + quoted_path + "\"\n";
    result.text.reserve(src.size() + 64 * edits.size() + result.text.size());
    std::stable_sort(edits.begin(), edits.end(), [](const Edit& a, const Edit& b) { return a.begin < b.begin; });
    size_t at = 0;
    for (const Edit& edit : edits) {
        if (edit.begin < at) {  // two rewrites of the same bytes: cannot happen for well-formed input
            result.errors.push_back({1, "cuda_to_cpp: overlapping rewrites (nested launch syntax?)"});
            break;
        }
        result.text.append(src.substr(at, edit.begin - at));
        result.text += edit.with;
        at = edit.end;
    }
    result.text.append(src.substr(at));
    return result;
}

}  // namespace cuda_to_cpp
