// run/plot.h: a small plotting module that writes PNG files, for the diagnostics of moe.cu runs.
//
// Plot kinds (each an `Axes`, laid out in a grid of panels by a `Figure`):
//   - line plots: several series, legend, optional log-scale axes, axis labels, title;
//   - heatmaps: a (rows x cols) matrix with a viridis colour bar (tokens per expert per log step);
//   - bar charts / histograms and grouped bars, with horizontal reference lines (the uniform load).
// Pixels go to a PNG through stb_image_write; text is drawn with stb_truetype and the DejaVu Sans font
// when it is installed, and with stb_easy_font otherwise, so a plot is never lost to a missing font.
// Host-only, plain C++; link with -lstb (Debian's libstb-dev provides the stb implementations).
//
// Typical use:
//   plot::Figure fig = plot::line_figure("loss", "step", "loss", {train_series, val_series});
//   plot::save_png(fig, "run/loss.png");
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <stb/stb_easy_font.h>
#include <stb/stb_image_write.h>
#include <stb/stb_truetype.h>

namespace plot {

// ------------------------------------------------------------------------------------------------
// Colours
struct Color {
    unsigned char r = 0, g = 0, b = 0;
};
inline bool operator==(const Color& a, const Color& b) { return a.r == b.r && a.g == b.g && a.b == b.b; }

inline Color rgb(int r, int g, int b) { return Color{(unsigned char)r, (unsigned char)g, (unsigned char)b}; }
inline Color hex(unsigned v) { return rgb((v >> 16) & 255, (v >> 8) & 255, v & 255); }

// The categorical palette (Tableau 10, matplotlib's default cycle).
inline Color palette(int i) {
    static const unsigned colors[10] = {0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd,
                                        0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf};
    return hex(colors[((i % 10) + 10) % 10]);
}

// Viridis (matplotlib's perceptually uniform colormap), t in [0, 1], from 11 samples of the original.
inline Color viridis(double t) {
    static const unsigned samples[11] = {0x440154, 0x482475, 0x414487, 0x355f8d, 0x2a788e, 0x21918c,
                                         0x22a884, 0x44bf70, 0x7ad151, 0xbddf26, 0xfde725};
    if (!(t >= 0)) t = 0;  // NaN too
    if (t > 1) t = 1;
    double u = t * 10;
    int i = std::min(9, (int)u);
    double f = u - i;
    Color a = hex(samples[i]), b = hex(samples[i + 1]);
    auto mix = [f](int x, int y) { return (int)std::lround(x + (y - x) * f); };
    return rgb(mix(a.r, b.r), mix(a.g, b.g), mix(a.b, b.b));
}

// ------------------------------------------------------------------------------------------------
// Canvas: an RGB image with alpha blending, anti-aliased strokes and a clip rectangle.
class Canvas {
  public:
    Canvas(int width, int height, Color background = rgb(255, 255, 255))
        : width_(width), height_(height), pixels_((size_t)width * height * 3) {
        for (size_t i = 0; i < (size_t)width * height; i++) {
            pixels_[3 * i] = background.r;
            pixels_[3 * i + 1] = background.g;
            pixels_[3 * i + 2] = background.b;
        }
        reset_clip();
    }
    int width() const { return width_; }
    int height() const { return height_; }
    const std::vector<unsigned char>& pixels() const { return pixels_; }
    Color get(int x, int y) const {
        const unsigned char* p = &pixels_[3 * ((size_t)y * width_ + x)];
        return Color{p[0], p[1], p[2]};
    }

    // Drawing outside [x0, x1) x [y0, y1) is ignored.
    void set_clip(int x0, int y0, int x1, int y1) {
        clip_x0_ = std::max(0, x0);
        clip_y0_ = std::max(0, y0);
        clip_x1_ = std::min(width_, x1);
        clip_y1_ = std::min(height_, y1);
    }
    void reset_clip() { set_clip(0, 0, width_, height_); }

    void blend(int x, int y, Color c, double alpha) {
        if (x < clip_x0_ || y < clip_y0_ || x >= clip_x1_ || y >= clip_y1_ || !(alpha > 0)) return;
        if (alpha > 1) alpha = 1;
        unsigned char* p = &pixels_[3 * ((size_t)y * width_ + x)];
        p[0] = (unsigned char)std::lround(p[0] + (c.r - p[0]) * alpha);
        p[1] = (unsigned char)std::lround(p[1] + (c.g - p[1]) * alpha);
        p[2] = (unsigned char)std::lround(p[2] + (c.b - p[2]) * alpha);
    }

    // Filled rectangle with fractional (anti-aliased) edges.
    void fill_rect(double x0, double y0, double x1, double y1, Color c, double alpha = 1) {
        if (x1 < x0) std::swap(x0, x1);
        if (y1 < y0) std::swap(y0, y1);
        int ix0 = std::max(clip_x0_, (int)std::floor(x0)), ix1 = std::min(clip_x1_ - 1, (int)std::ceil(x1) - 1);
        int iy0 = std::max(clip_y0_, (int)std::floor(y0)), iy1 = std::min(clip_y1_ - 1, (int)std::ceil(y1) - 1);
        for (int y = iy0; y <= iy1; y++) {
            double cy = std::min<double>(y + 1, y1) - std::max<double>(y, y0);
            for (int x = ix0; x <= ix1; x++) {
                double cx = std::min<double>(x + 1, x1) - std::max<double>(x, x0);
                blend(x, y, c, alpha * cx * cy);
            }
        }
    }

    // Anti-aliased stroke of a segment with round caps (pixel centres at +0.5).
    void line(double x0, double y0, double x1, double y1, Color c, double width = 1.5) {
        if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) return;
        double r = width / 2;
        int bx0 = std::max(clip_x0_, (int)std::floor(std::min(x0, x1) - r - 1));
        int bx1 = std::min(clip_x1_ - 1, (int)std::ceil(std::max(x0, x1) + r + 1));
        int by0 = std::max(clip_y0_, (int)std::floor(std::min(y0, y1) - r - 1));
        int by1 = std::min(clip_y1_ - 1, (int)std::ceil(std::max(y0, y1) + r + 1));
        double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
        for (int y = by0; y <= by1; y++) {
            for (int x = bx0; x <= bx1; x++) {
                double px = x + 0.5 - x0, py = y + 0.5 - y0;
                double t = len2 > 0 ? std::clamp((px * dx + py * dy) / len2, 0.0, 1.0) : 0.0;
                double ex = px - t * dx, ey = py - t * dy;
                double d = std::sqrt(ex * ex + ey * ey);
                double cover = std::clamp(r + 0.5 - d, 0.0, 1.0);
                if (cover > 0) blend(x, y, c, cover);
            }
        }
    }

    // Dashed segment: `dash` pixels on, `gap` pixels off.
    void dashed_line(double x0, double y0, double x1, double y1, Color c, double width = 1.5, double dash = 8,
                     double gap = 5) {
        double len = std::hypot(x1 - x0, y1 - y0);
        if (!(len > 0)) return;
        double ux = (x1 - x0) / len, uy = (y1 - y0) / len;
        for (double s = 0; s < len; s += dash + gap) {
            double e = std::min(len, s + dash);
            line(x0 + ux * s, y0 + uy * s, x0 + ux * e, y0 + uy * e, c, width);
        }
    }

    void disc(double cx, double cy, double radius, Color c) {
        for (int y = (int)std::floor(cy - radius - 1); y <= (int)std::ceil(cy + radius + 1); y++)
            for (int x = (int)std::floor(cx - radius - 1); x <= (int)std::ceil(cx + radius + 1); x++) {
                double d = std::hypot(x + 0.5 - cx, y + 0.5 - cy);
                blend(x, y, c, std::clamp(radius + 0.5 - d, 0.0, 1.0));
            }
    }

    // Rectangle outline along pixel edges (crisp 1-pixel lines).
    void outline(int x0, int y0, int x1, int y1, Color c) {
        for (int x = x0; x <= x1; x++) { blend(x, y0, c, 1); blend(x, y1, c, 1); }
        for (int y = y0; y <= y1; y++) { blend(x0, y, c, 1); blend(x1, y, c, 1); }
    }
    void hline(int x0, int x1, int y, Color c, double alpha = 1) {
        for (int x = std::min(x0, x1); x <= std::max(x0, x1); x++) blend(x, y, c, alpha);
    }
    void vline(int x, int y0, int y1, Color c, double alpha = 1) {
        for (int y = std::min(y0, y1); y <= std::max(y0, y1); y++) blend(x, y, c, alpha);
    }

    bool write_png(const std::string& path) const {
        return stbi_write_png(path.c_str(), width_, height_, 3, pixels_.data(), width_ * 3) != 0;
    }

  private:
    int width_, height_;
    std::vector<unsigned char> pixels_;
    int clip_x0_ = 0, clip_y0_ = 0, clip_x1_ = 0, clip_y1_ = 0;
};

// ------------------------------------------------------------------------------------------------
// Text: stb_truetype with DejaVu Sans when present, stb_easy_font otherwise.
struct TextMask {  // coverage in [0, 1], (h rows, w columns)
    int w = 0, h = 0;
    std::vector<float> a;
};

class Font {
  public:
    // The process-wide font. On first use it loads $MOE_PLOT_FONT or the first DejaVu Sans it finds.
    static Font& get() {
        static Font font;
        return font;
    }
    // Use this TrueType file; an empty path (or a file that does not load) selects the built-in
    // stb_easy_font. Returns true when a TrueType font is in use afterwards.
    bool load(const std::string& path) {
        ttf_ = false;
        data_.clear();
        if (path.empty()) return false;
        FILE* f = fopen(path.c_str(), "rb");
        if (!f) return false;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        if (n > 0) {
            data_.resize((size_t)n);
            if (fread(data_.data(), 1, (size_t)n, f) != (size_t)n) data_.clear();
        }
        fclose(f);
        if (data_.empty()) return false;
        int offset = stbtt_GetFontOffsetForIndex(data_.data(), 0);
        if (offset < 0 || !stbtt_InitFont(&info_, data_.data(), offset)) {
            data_.clear();
            return false;
        }
        ttf_ = true;
        return true;
    }
    bool truetype() const { return ttf_; }

    // Width in pixels of `text` at pixel height `px` (line height, ascent + descent).
    double width(const std::string& text, double px) const {
        if (ttf_) {
            float scale = stbtt_ScaleForPixelHeight(&info_, (float)px);
            std::vector<int> cps = codepoints(text);
            double w = 0;
            for (size_t i = 0; i < cps.size(); i++) {
                int advance, lsb;
                stbtt_GetCodepointHMetrics(&info_, cps[i], &advance, &lsb);
                w += advance * scale;
                if (i + 1 < cps.size()) w += stbtt_GetCodepointKernAdvance(&info_, cps[i], cps[i + 1]) * scale;
            }
            return w;
        }
        std::string s = ascii(text);
        return stb_easy_font_width(const_cast<char*>(s.c_str())) * easy_scale(px);
    }

    // The text as a coverage mask, px high (baseline at about 0.8 px from the top).
    TextMask render(const std::string& text, double px) const {
        TextMask m;
        m.w = (int)std::ceil(width(text, px)) + 2;
        m.h = (int)std::ceil(px) + 2;
        m.a.assign((size_t)m.w * m.h, 0.f);
        if (ttf_) {
            float scale = stbtt_ScaleForPixelHeight(&info_, (float)px);
            int ascent, descent, gap;
            stbtt_GetFontVMetrics(&info_, &ascent, &descent, &gap);
            double baseline = 1 + ascent * scale;
            std::vector<int> cps = codepoints(text);
            double x = 1;
            std::vector<unsigned char> glyph;
            for (size_t i = 0; i < cps.size(); i++) {
                int advance, lsb;
                stbtt_GetCodepointHMetrics(&info_, cps[i], &advance, &lsb);
                double fx = std::floor(x);
                float shift = (float)(x - fx);
                int x0, y0, x1, y1;
                stbtt_GetCodepointBitmapBoxSubpixel(&info_, cps[i], scale, scale, shift, 0, &x0, &y0, &x1, &y1);
                int gw = x1 - x0, gh = y1 - y0;
                if (gw > 0 && gh > 0) {
                    glyph.assign((size_t)gw * gh, 0);
                    stbtt_MakeCodepointBitmapSubpixel(&info_, glyph.data(), gw, gh, gw, scale, scale, shift, 0, cps[i]);
                    int ox = (int)fx + x0, oy = (int)std::lround(baseline) + y0;
                    for (int gy = 0; gy < gh; gy++)
                        for (int gx = 0; gx < gw; gx++) {
                            int mx = ox + gx, my = oy + gy;
                            if (mx < 0 || my < 0 || mx >= m.w || my >= m.h) continue;
                            float& a = m.a[(size_t)my * m.w + mx];
                            a = std::min(1.f, a + glyph[(size_t)gy * gw + gx] / 255.f);
                        }
                }
                x += advance * scale;
                if (i + 1 < cps.size()) x += stbtt_GetCodepointKernAdvance(&info_, cps[i], cps[i + 1]) * scale;
            }
            return m;
        }
        // stb_easy_font: quads on a grid whose glyphs are about 10 units tall (with descenders).
        std::string s = ascii(text);
        std::vector<char> vbuf(s.size() * 400 + 64);
        int quads = stb_easy_font_print(0, 0, const_cast<char*>(s.c_str()), nullptr, vbuf.data(), (int)vbuf.size());
        double sc = easy_scale(px);
        for (int q = 0; q < quads; q++) {
            const float* v0 = reinterpret_cast<const float*>(vbuf.data() + q * 64);
            const float* v2 = reinterpret_cast<const float*>(vbuf.data() + q * 64 + 32);
            double qx0 = 1 + v0[0] * sc, qy0 = 1 + v0[1] * sc, qx1 = 1 + v2[0] * sc, qy1 = 1 + v2[1] * sc;
            for (int y = std::max(0, (int)std::floor(qy0)); y < std::min(m.h, (int)std::ceil(qy1)); y++) {
                double cy = std::min<double>(y + 1, qy1) - std::max<double>(y, qy0);
                for (int x = std::max(0, (int)std::floor(qx0)); x < std::min(m.w, (int)std::ceil(qx1)); x++) {
                    double cx = std::min<double>(x + 1, qx1) - std::max<double>(x, qx0);
                    float& a = m.a[(size_t)y * m.w + x];
                    a = std::min(1.f, a + (float)(cx * cy));
                }
            }
        }
        return m;
    }

  private:
    Font() {
        std::vector<std::string> candidates;
        if (const char* env = getenv("MOE_PLOT_FONT")) candidates.push_back(env);
        candidates.push_back("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
        candidates.push_back("/usr/share/fonts/TTF/DejaVuSans.ttf");
        candidates.push_back("/usr/share/fonts/dejavu/DejaVuSans.ttf");
        candidates.push_back("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf");
        for (const std::string& c : candidates)
            if (load(c)) break;
    }
    static double easy_scale(double px) { return px / 11.0; }
    static std::string ascii(const std::string& text) {
        std::string s;
        for (int cp : codepoints(text)) s.push_back(cp >= 32 && cp < 127 ? (char)cp : '?');
        return s;
    }
    static std::vector<int> codepoints(const std::string& s) {  // UTF-8 decode ('?' for bad bytes)
        std::vector<int> out;
        for (size_t i = 0; i < s.size();) {
            unsigned char c = (unsigned char)s[i];
            int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
            if (n < 0 || i + n >= s.size()) {  // bad lead byte or a truncated sequence
                out.push_back('?');
                i++;
                continue;
            }
            int cp = n == 0 ? c : c & (0x3f >> n);
            for (int k = 1; k <= n; k++) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3f);
            out.push_back(cp);
            i += n + 1;
        }
        return out;
    }
    bool ttf_ = false;
    std::vector<unsigned char> data_;
    stbtt_fontinfo info_{};
};

enum class Align { Start, Center, End };

// Draws `text` with its box anchored at (x, y): ha/va choose which edge (or the centre) sits there.
// vertical = true turns the text 90 degrees counter-clockwise (reading bottom to top).
inline void draw_text(Canvas& canvas, double x, double y, const std::string& text, double px, Color c,
                      Align ha = Align::Start, Align va = Align::Start, bool vertical = false) {
    if (text.empty()) return;
    TextMask m = Font::get().render(text, px);
    int bw = vertical ? m.h : m.w, bh = vertical ? m.w : m.h;
    double ox = ha == Align::Start ? x : ha == Align::Center ? x - bw / 2.0 : x - bw;
    double oy = va == Align::Start ? y : va == Align::Center ? y - bh / 2.0 : y - bh;
    int ix = (int)std::lround(ox), iy = (int)std::lround(oy);
    for (int my = 0; my < m.h; my++)
        for (int mx = 0; mx < m.w; mx++) {
            float a = m.a[(size_t)my * m.w + mx];
            if (a <= 0) continue;
            if (vertical) canvas.blend(ix + my, iy + (m.w - 1 - mx), c, a);
            else canvas.blend(ix + mx, iy + my, c, a);
        }
}
inline double text_width(const std::string& text, double px) { return Font::get().width(text, px) + 2; }

// ------------------------------------------------------------------------------------------------
// Ticks and number formatting
inline std::string format_number(double v, int decimals) {
    char buf[64];
    double a = std::fabs(v);
    if (a != 0 && (a >= 1e6 || a < 1e-4)) snprintf(buf, sizeof buf, "%.*e", std::min(decimals, 2), v);
    else snprintf(buf, sizeof buf, "%.*f", decimals, v);
    std::string s = buf;
    if (s == "-0" || (s.size() > 1 && s[0] == '-' && s.find_first_not_of("-0.") == std::string::npos)) s = s.substr(1);
    return s;
}

// Decimals needed to write multiples of `step` exactly (up to 8).
inline int decimals_for_step(double step) {
    for (int d = 0; d < 8; d++) {
        double s = step * std::pow(10.0, d);
        if (std::fabs(s - std::round(s)) < 1e-6 * std::max(1.0, std::fabs(s))) return d;
    }
    return 8;
}

// About `target` evenly spaced "nice" values (1, 2, 2.5, 5 x 10^k) inside [lo, hi].
inline std::vector<double> nice_ticks(double lo, double hi, int target, double* step_out = nullptr) {
    std::vector<double> ticks;
    if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) {
        if (std::isfinite(lo)) ticks.push_back(lo);
        if (step_out) *step_out = 1;
        return ticks;
    }
    double span = hi - lo, raw = span / std::max(1, target);
    double mag = std::pow(10.0, std::floor(std::log10(raw)));
    double step = 10 * mag;
    for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
        if (m * mag >= raw) {
            step = m * mag;
            break;
        }
    double first = std::ceil(lo / step - 1e-9) * step;
    for (double t = first; t <= hi + step * 1e-9; t += step) ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
    if (step_out) *step_out = step;
    return ticks;
}

struct Tick {
    double value;  // in data units
    std::string label;
    bool major = true;
};

inline std::string format_power_of_ten(int k) {
    if (k >= -4 && k <= 5) return format_number(std::pow(10.0, k), std::max(0, -k));
    return "1e" + std::to_string(k);
}

// Ticks of a log axis over [lo, hi] (positive): decades, with 2 and 5 when the range is short.
inline std::vector<Tick> linear_ticks(double lo, double hi, int target);
inline std::vector<Tick> log_ticks(double lo, double hi) {
    std::vector<Tick> ticks;
    if (hi / lo < 30) {  // short range (a loss curve): evenly spaced values read better than decades
        for (const Tick& t : linear_ticks(lo, hi, 14))  // thinned to what fits by the renderer
            if (t.value > 0) ticks.push_back(t);
        if (ticks.size() >= 2) return ticks;
        ticks.clear();
    }
    int k0 = (int)std::floor(std::log10(lo)), k1 = (int)std::ceil(std::log10(hi));
    int decades = k1 - k0;
    int every = decades > 8 ? (decades + 7) / 8 : 1;
    for (int k = k0; k <= k1; k++) {
        double v = std::pow(10.0, k);
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9))
            ticks.push_back({v, (k % every == 0) ? format_power_of_ten(k) : "", true});
        if (decades <= 3) {
            for (int m = 2; m <= 9; m++) {
                double u = m * v;
                if (u < lo || u > hi) continue;
                bool labelled = decades <= 1 ? (m == 2 || m == 5 || decades == 0) : (m == 2 || m == 5);
                if (decades <= 1 && (hi / lo) < 4) labelled = true;
                char buf[32];
                if (k >= -4 && k <= 5) snprintf(buf, sizeof buf, "%s", format_number(u, std::max(0, -k)).c_str());
                else snprintf(buf, sizeof buf, "%de%d", m, k);
                ticks.push_back({u, labelled ? std::string(buf) : std::string(), false});
            }
        }
    }
    std::sort(ticks.begin(), ticks.end(), [](const Tick& a, const Tick& b) { return a.value < b.value; });
    return ticks;
}

inline std::vector<Tick> linear_ticks(double lo, double hi, int target) {
    double step = 1;
    std::vector<double> values = nice_ticks(lo, hi, target, &step);
    int dec = decimals_for_step(step);
    std::vector<Tick> ticks;
    for (double v : values) ticks.push_back({v, format_number(v, dec), true});
    return ticks;
}

// ------------------------------------------------------------------------------------------------
// Plot description
struct Series {
    std::string name;          // legend entry (empty: not in the legend)
    std::vector<double> x, y;  // same length; non-finite y breaks the line
    int color = -1;            // palette index; -1: the series' position in the axes
    double width = 2.0;
    bool markers = false;      // a dot at every point
    bool dashed = false;
};

struct RefLine {  // horizontal reference line across the plot
    double y = 0;
    std::string label;  // legend entry
    Color color = rgb(200, 30, 30);
    bool dashed = true;
};

struct BarGroup {  // one value per category; several groups make grouped bars
    std::string name;
    std::vector<double> values;
    int color = -1;  // palette index; -1: the group's position
};

struct Axes {
    std::string title, xlabel, ylabel;
    bool log_x = false, log_y = false;
    double xmin = NAN, xmax = NAN, ymin = NAN, ymax = NAN;  // NaN: from the data
    bool legend = true;
    // line plot
    std::vector<Series> series;
    // bar chart (drawn when `bars` is non-empty): categories along x
    std::vector<std::string> categories;
    std::vector<BarGroup> bars;
    std::vector<RefLine> hlines;  // line plots and bar charts
    // heatmap (drawn when heat_rows > 0): row r at the top is row 0
    int heat_rows = 0, heat_cols = 0;
    std::vector<double> heat;                  // (heat_rows, heat_cols) row-major
    std::vector<double> heat_x;                // (heat_cols) x value of each column; empty: 0..cols-1
    std::vector<std::string> heat_row_labels;  // (heat_rows); empty: the row index
    double vmin = NAN, vmax = NAN;             // colour range; NaN: from the data
    std::string colorbar_label;
};

struct Figure {
    int width = 960, height = 600;
    std::string title;
    int rows = 1, cols = 1;  // panel grid, filled row by row
    std::vector<Axes> axes;
    double font_px = 14;  // tick labels; other text is scaled from it
};

// ------------------------------------------------------------------------------------------------
// Rendering
namespace detail {

struct Scale {
    double lo, hi;  // data range (log10 of it when log)
    bool log;
    double p0, p1;  // pixel positions of lo and hi
    double operator()(double v) const {
        double u = log ? (v > 0 ? std::log10(v) : -INFINITY) : v;
        if (!std::isfinite(u)) return u < 0 ? (p1 > p0 ? -1e9 : 1e9) : NAN;
        return p0 + (u - lo) / (hi - lo) * (p1 - p0);
    }
};

inline void data_range(const std::vector<double>& v, bool log, double& lo, double& hi) {
    for (double x : v)
        if (std::isfinite(x) && (!log || x > 0)) {
            lo = std::min(lo, x);
            hi = std::max(hi, x);
        }
}

// Finalises an axis range: padding, degenerate ranges, log10 for log axes.
inline void finish_range(double& lo, double& hi, bool log, double pad, double fixed_lo, double fixed_hi) {
    if (!(lo <= hi)) { lo = log ? 0.1 : 0; hi = log ? 10 : 1; }
    if (log) {
        lo = std::log10(lo);
        hi = std::log10(hi);
    }
    if (hi - lo < 1e-12 * std::max(1.0, std::fabs(hi))) {
        double d = log ? 0.5 : std::max(1e-3, std::fabs(lo) * 0.1);
        lo -= d;
        hi += d;
    } else {
        double d = (hi - lo) * pad;
        lo -= d;
        hi += d;
    }
    if (std::isfinite(fixed_lo)) lo = log ? std::log10(fixed_lo) : fixed_lo;
    if (std::isfinite(fixed_hi)) hi = log ? std::log10(fixed_hi) : fixed_hi;
    if (!(hi > lo)) hi = lo + 1;
}

inline std::vector<Tick> axis_ticks(double lo, double hi, bool log, int target) {
    if (log) return log_ticks(std::pow(10.0, lo), std::pow(10.0, hi));
    return linear_ticks(lo, hi, target);
}

// Drops ticks (in order of value) that would sit closer than min_px to the previous kept one.
template <typename ScaleT>
std::vector<Tick> thin_ticks(const std::vector<Tick>& ticks, const ScaleT& scale, double min_px) {
    std::vector<Tick> out;
    double last = NAN;
    for (const Tick& t : ticks) {
        double p = scale(t.value);
        if (!std::isfinite(p)) continue;
        if (t.label.empty() || !std::isfinite(last) || std::fabs(p - last) >= min_px) {
            out.push_back(t);
            if (!t.label.empty()) last = p;
        }
    }
    return out;
}

struct LegendEntry {
    std::string name;
    Color color;
    int kind;  // 0 line, 1 box, 2 dashed line
    bool markers;
};

struct LegendPlacement {
    double x, y, w, h;
    long covered;  // data points under the box
};

// The legend box at the corner (upper right, upper left, lower right, lower left) covering the fewest points.
inline LegendPlacement place_legend(const std::vector<LegendEntry>& entries, int px0, int py0, int px1, int py1,
                                    const std::vector<std::pair<double, double>>& points, double fpx) {
    double row = fpx * 1.45, sample = fpx * 2.2;
    double w = 0;
    for (const LegendEntry& e : entries) w = std::max(w, text_width(e.name, fpx));
    double bw = w + sample + fpx * 1.4, bh = row * entries.size() + fpx * 0.6;
    const double margin = 8;
    LegendPlacement best{px1 - margin - bw, py0 + margin, bw, bh, -1};
    const double cx[4] = {px1 - margin - bw, px0 + margin, px1 - margin - bw, px0 + margin};
    const double cy[4] = {py0 + margin, py0 + margin, py1 - margin - bh, py1 - margin - bh};
    for (int k = 0; k < 4; k++) {
        long n = 0;
        for (const auto& p : points)
            if (p.first >= cx[k] - 4 && p.first <= cx[k] + bw + 4 && p.second >= cy[k] - 4 && p.second <= cy[k] + bh + 4) n++;
        if (best.covered < 0 || n < best.covered) best = {cx[k], cy[k], bw, bh, n};
    }
    return best;
}

inline void draw_legend(Canvas& c, const std::vector<LegendEntry>& entries, int px0, int py0, int px1, int py1,
                        const std::vector<std::pair<double, double>>& points, double fpx) {
    if (entries.empty()) return;
    LegendPlacement p = place_legend(entries, px0, py0, px1, py1, points, fpx);
    double row = fpx * 1.45, sample = fpx * 2.2;
    c.fill_rect(p.x, p.y, p.x + p.w, p.y + p.h, rgb(255, 255, 255), 0.88);
    c.outline((int)p.x, (int)p.y, (int)(p.x + p.w), (int)(p.y + p.h), rgb(190, 190, 190));
    for (size_t i = 0; i < entries.size(); i++) {
        const LegendEntry& e = entries[i];
        double y = p.y + fpx * 0.3 + row * (i + 0.5);
        double x = p.x + fpx * 0.5;
        if (e.kind == 1) c.fill_rect(x + sample * 0.2, y - fpx * 0.4, x + sample * 0.8, y + fpx * 0.4, e.color);
        else if (e.kind == 2) c.dashed_line(x, y, x + sample, y, e.color, 2.0, 6, 4);
        else c.line(x, y, x + sample, y, e.color, 2.5);
        if (e.markers) c.disc(x + sample / 2, y, 3.0, e.color);
        draw_text(c, x + sample + fpx * 0.4, y, e.name, fpx, rgb(30, 30, 30), Align::Start, Align::Center);
    }
}

// Legend entries of a line or bar panel, in drawing order.
inline std::vector<LegendEntry> legend_entries(const Axes& ax, bool bars) {
    std::vector<LegendEntry> out;
    if (bars) {
        for (size_t g = 0; g < ax.bars.size(); g++)
            if (!ax.bars[g].name.empty()) out.push_back({ax.bars[g].name, palette(ax.bars[g].color >= 0 ? ax.bars[g].color : (int)g), 1, false});
    } else {
        for (size_t k = 0; k < ax.series.size(); k++) {
            const Series& s = ax.series[k];
            if (!s.name.empty()) out.push_back({s.name, palette(s.color >= 0 ? s.color : (int)k), s.dashed ? 2 : 0, s.markers});
        }
    }
    for (const RefLine& r : ax.hlines)
        if (!r.label.empty()) out.push_back({r.label, r.color, r.dashed ? 2 : 0, false});
    return out;
}

// Draws one panel into the box [bx0, bx0 + bw) x [by0, by0 + bh).
inline void render_axes(Canvas& c, const Axes& ax, int bx0, int by0, int bw, int bh, double fpx) {
    const Color text_color = rgb(30, 30, 30), grid = rgb(228, 228, 228), frame = rgb(110, 110, 110);
    const double label_px = fpx * 1.1, title_px = fpx * 1.2;
    const bool heat = ax.heat_rows > 0 && ax.heat_cols > 0;
    const bool bars = !heat && !ax.bars.empty();

    // ---- data ranges
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    bool log_x = ax.log_x && !bars && !heat, log_y = ax.log_y && !heat;
    std::vector<double> hx;  // heatmap column x values
    if (heat) {
        if ((int)ax.heat_x.size() == ax.heat_cols) hx = ax.heat_x;
        else for (int j = 0; j < ax.heat_cols; j++) hx.push_back(j);
        xlo = 0; xhi = ax.heat_cols;  // in column units
        ylo = 0; yhi = ax.heat_rows;
    } else if (bars) {
        xlo = -0.5; xhi = ax.categories.size() > 0 ? ax.categories.size() - 0.5 : 0.5;
        size_t ncat = ax.categories.size();
        for (const BarGroup& g : ax.bars) ncat = std::max(ncat, g.values.size());
        xhi = ncat - 0.5;
        if (!log_y) { ylo = 0; yhi = 0; }
        for (const BarGroup& g : ax.bars) data_range(g.values, log_y, ylo, yhi);
        for (const RefLine& r : ax.hlines) if (std::isfinite(r.y) && (!log_y || r.y > 0)) { ylo = std::min(ylo, r.y); yhi = std::max(yhi, r.y); }
    } else {
        for (const Series& s : ax.series) {
            std::vector<double> xs, ys;
            for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); i++)
                if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]) && (!log_x || s.x[i] > 0) && (!log_y || s.y[i] > 0)) {
                    xs.push_back(s.x[i]);
                    ys.push_back(s.y[i]);
                }
            data_range(xs, log_x, xlo, xhi);
            data_range(ys, log_y, ylo, yhi);
        }
        for (const RefLine& r : ax.hlines) if (std::isfinite(r.y) && (!log_y || r.y > 0)) { ylo = std::min(ylo, r.y); yhi = std::max(yhi, r.y); }
    }
    if (heat) {
        // column / row units, no padding
    } else if (bars) {
        finish_range(ylo, yhi, log_y, 0.0, ax.ymin, ax.ymax);
        if (!log_y && !std::isfinite(ax.ymax)) yhi += (yhi - ylo) * 0.08;  // head room for the legend
        if (log_y && !std::isfinite(ax.ymax)) yhi += (yhi - ylo) * 0.08;
    } else {
        finish_range(xlo, xhi, log_x, 0.0, ax.xmin, ax.xmax);
        finish_range(ylo, yhi, log_y, 0.05, ax.ymin, ax.ymax);
    }

    // ---- margins from the tick labels
    int ytarget = std::max(3, bh / 60), xtarget = std::max(3, bw / 110);
    std::vector<Tick> yt, xt;
    if (heat) {
        int every = std::max(1, (int)std::ceil(ax.heat_rows * fpx * 1.3 / std::max(1, bh - 60)));
        for (int r = 0; r < ax.heat_rows; r += every) {
            std::string lab = (int)ax.heat_row_labels.size() == ax.heat_rows ? ax.heat_row_labels[r] : std::to_string(r);
            yt.push_back({r + 0.5, lab, true});
        }
    } else {
        yt = axis_ticks(ylo, yhi, log_y, ytarget);
    }
    double ytw = 0;
    for (const Tick& t : yt) ytw = std::max(ytw, text_width(t.label, fpx));
    int left = (int)(ytw + 10 + (ax.ylabel.empty() ? 4 : label_px * 1.5));
    int top = (int)(ax.title.empty() ? fpx * 0.8 : title_px * 1.9);
    int bottom = (int)(fpx * 1.9 + (ax.xlabel.empty() ? 4 : label_px * 1.5));
    int right = (int)(fpx * 1.2);
    // colour bar
    double vmin = ax.vmin, vmax = ax.vmax;
    std::vector<Tick> ct;
    if (heat) {
        double lo = INFINITY, hi = -INFINITY;
        data_range(ax.heat, false, lo, hi);
        if (!std::isfinite(vmin)) vmin = std::isfinite(lo) ? lo : 0;
        if (!std::isfinite(vmax)) vmax = std::isfinite(hi) ? hi : 1;
        if (!(vmax > vmin)) vmax = vmin + 1;
        ct = linear_ticks(vmin, vmax, std::max(3, bh / 55));
        double ctw = 0;
        for (const Tick& t : ct) ctw = std::max(ctw, text_width(t.label, fpx));
        right = (int)(fpx * 1.2 + 16 + 6 + ctw + (ax.colorbar_label.empty() ? 0 : label_px * 1.5) + 6);
    }
    int px0 = bx0 + left, py0 = by0 + top, px1 = bx0 + bw - right, py1 = by0 + bh - bottom;
    if (px1 - px0 < 20 || py1 - py0 < 20) return;  // no room

    Scale sx{xlo, xhi, log_x, (double)px0, (double)px1};
    Scale sy{ylo, yhi, log_y, (double)py1, (double)py0};
    if (!heat) yt = thin_ticks(yt, sy, fpx * 1.8);

    if (heat) {
        // x ticks: nice values of the column x, placed at the centre of the nearest column
        double x0v = hx.front(), x1v = hx.back();
        std::vector<Tick> cand = linear_ticks(std::min(x0v, x1v), std::max(x0v, x1v), xtarget);
        if (ax.heat_cols == 1) cand = {{x0v, format_number(x0v, decimals_for_step(std::max(1e-9, std::fabs(x0v)))), true}};
        for (const Tick& t : cand) {
            int best = 0;
            for (int j = 1; j < ax.heat_cols; j++)
                if (std::fabs(hx[j] - t.value) < std::fabs(hx[best] - t.value)) best = j;
            if (ax.heat_cols > 1 && std::fabs(hx[best] - t.value) > std::fabs(x1v - x0v) / (ax.heat_cols - 1) * 0.51) continue;
            xt.push_back({best + 0.5, t.label, true});
        }
    } else if (bars) {
        size_t ncat = (size_t)std::lround(xhi + 0.5);
        double maxw = 0;
        for (size_t i = 0; i < ncat; i++) {
            std::string lab = i < ax.categories.size() ? ax.categories[i] : std::to_string(i);
            maxw = std::max(maxw, text_width(lab, fpx));
        }
        double slot = (px1 - px0) / (double)std::max<size_t>(1, ncat);
        size_t every = std::max<size_t>(1, (size_t)std::ceil((maxw + 6) / std::max(1.0, slot)));
        for (size_t i = 0; i < ncat; i += every)
            xt.push_back({(double)i, i < ax.categories.size() ? ax.categories[i] : std::to_string(i), true});
    } else {
        xt = axis_ticks(xlo, xhi, log_x, xtarget);
    }

    // ---- data: drawn (draw = true) or only located, as pixel positions for placing the legend
    auto data_pass = [&](bool draw) {
        std::vector<std::pair<double, double>> points;
        if (heat) {
            if (!draw) return points;
            double W = px1 - px0, H = py1 - py0;
            for (int y = py0; y < py1; y++) {
                int r = std::min(ax.heat_rows - 1, (int)((y - py0 + 0.5) / H * ax.heat_rows));
                for (int x = px0; x < px1; x++) {
                    int col = std::min(ax.heat_cols - 1, (int)((x - px0 + 0.5) / W * ax.heat_cols));
                    double v = ax.heat[(size_t)r * ax.heat_cols + col];
                    Color cc = std::isfinite(v) ? viridis((v - vmin) / (vmax - vmin)) : rgb(200, 200, 200);
                    if (draw) c.blend(x, y, cc, 1);
                }
            }
        } else if (bars) {
            size_t ng = ax.bars.size();
            double slot = (sx(1) - sx(0));
            double bwid = slot * 0.8 / ng;
            double base = log_y ? (double)py1 : sy(std::clamp(0.0, ylo, yhi));  // bars grow from 0 (log: the bottom)
            for (size_t g = 0; g < ng; g++) {
                const BarGroup& bg = ax.bars[g];
                Color col = palette(bg.color >= 0 ? bg.color : (int)g);
                for (size_t i = 0; i < bg.values.size(); i++) {
                    double v = bg.values[i];
                    if (!std::isfinite(v) || (log_y && v <= 0)) continue;
                    double xc = sx((double)i) - slot * 0.4 + bwid * (g + 0.5);
                    double y = sy(v);
                    if (draw) c.fill_rect(xc - bwid * 0.46, std::min(y, base), xc + bwid * 0.46, std::max(y, base), col);
                    points.push_back({xc, y});
                    for (double yy = std::min(y, base); yy <= std::max(y, base); yy += 6) points.push_back({xc, yy});
                }
            }
        } else {
            for (size_t k = 0; k < ax.series.size(); k++) {
                const Series& s = ax.series[k];
                Color col = palette(s.color >= 0 ? s.color : (int)k);
                size_t n = std::min(s.x.size(), s.y.size());
                bool have_prev = false;
                double lx = 0, ly = 0;
                for (size_t i = 0; i < n; i++) {
                    double X = sx(s.x[i]), Y = sy(s.y[i]);
                    if (!std::isfinite(X) || !std::isfinite(Y) || (log_y && !(s.y[i] > 0)) || (log_x && !(s.x[i] > 0))) {
                        have_prev = false;
                        continue;
                    }
                    if (have_prev && draw) {
                        if (s.dashed) c.dashed_line(lx, ly, X, Y, col, s.width);
                        else c.line(lx, ly, X, Y, col, s.width);
                    }
                    if (draw && (s.markers || n == 1)) c.disc(X, Y, std::max(2.5, s.width * 1.4), col);
                    points.push_back({X, Y});
                    if (have_prev) {  // points along long segments too
                        double len = std::hypot(X - lx, Y - ly);
                        for (double t = 8; t < len; t += 8) points.push_back({lx + (X - lx) * t / len, ly + (Y - ly) * t / len});
                    }
                    have_prev = true;
                    lx = X;
                    ly = Y;
                }
            }
        }
        if (!heat)
            for (const RefLine& r : ax.hlines) {
                double y = sy(r.y);
                if (!std::isfinite(y)) continue;
                if (draw && r.dashed) c.dashed_line(px0, y, px1, y, r.color, 2.0);
                else if (draw) c.line(px0, y, px1, y, r.color, 2.0);
                for (double x = px0; x <= px1; x += 8) points.push_back({x, y});
            }
        return points;
    };

    // ---- room for the legend: when every corner would cover data, raise the top of the value axis
    std::vector<LegendEntry> legend = heat ? std::vector<LegendEntry>() : legend_entries(ax, bars);
    if (ax.legend && !legend.empty() && !std::isfinite(ax.ymax)) {
        LegendPlacement lp = place_legend(legend, px0, py0, px1, py1, data_pass(false), fpx);
        double ph = py1 - py0, need = lp.h + 16;
        if (lp.covered > 0 && need < ph * 0.6) {
            yhi = ylo + (yhi - ylo) * ph / (ph - need);
            sy.hi = yhi;
            yt = thin_ticks(axis_ticks(ylo, yhi, log_y, ytarget), sy, fpx * 1.8);
        }
    }

    // ---- background grid (value axes only)
    c.fill_rect(px0, py0, px1, py1, rgb(255, 255, 255));
    if (!heat) {
        for (const Tick& t : yt) {
            double y = sy(t.value);
            if (y < py0 - 0.5 || y > py1 + 0.5) continue;
            c.hline(px0, px1, (int)std::lround(y), grid, t.major ? 1.0 : 0.5);
        }
        if (!bars)
            for (const Tick& t : xt) {
                double x = sx(t.value);
                if (x < px0 - 0.5 || x > px1 + 0.5) continue;
                c.vline((int)std::lround(x), py0, py1, grid, t.major ? 1.0 : 0.5);
            }
    }

    c.set_clip(px0, py0, px1 + 1, py1 + 1);
    std::vector<std::pair<double, double>> points = data_pass(true);
    c.reset_clip();

    // ---- frame, ticks, labels
    c.outline(px0, py0, px1, py1, frame);
    for (const Tick& t : yt) {
        double y = heat ? py0 + (t.value) / ax.heat_rows * (py1 - py0) : sy(t.value);
        if (y < py0 - 0.5 || y > py1 + 0.5) continue;
        int iy = (int)std::lround(y);
        c.hline(px0 - (t.major ? 5 : 3), px0 - 1, iy, frame);
        if (!t.label.empty()) draw_text(c, px0 - 7, y, t.label, fpx, text_color, Align::End, Align::Center);
    }
    double last_label_end = -1e9;
    for (const Tick& t : xt) {
        double x = heat ? px0 + t.value / ax.heat_cols * (px1 - px0) : sx(t.value);
        if (x < px0 - 0.5 || x > px1 + 0.5) continue;
        int ix = (int)std::lround(x);
        c.vline(ix, py1 + 1, py1 + (t.major ? 5 : 3), frame);
        if (t.label.empty()) continue;
        double w = text_width(t.label, fpx);
        if (x - w / 2 < last_label_end + 6) continue;  // would overlap the previous label
        draw_text(c, x, py1 + 7, t.label, fpx, text_color, Align::Center, Align::Start);
        last_label_end = x + w / 2;
    }
    if (!ax.xlabel.empty())
        draw_text(c, (px0 + px1) / 2.0, by0 + bh - 3, ax.xlabel, label_px, text_color, Align::Center, Align::End);
    if (!ax.ylabel.empty())
        draw_text(c, bx0 + 3, (py0 + py1) / 2.0, ax.ylabel, label_px, text_color, Align::Start, Align::Center, true);
    if (!ax.title.empty())
        draw_text(c, (px0 + px1) / 2.0, by0 + title_px * 0.35, ax.title, title_px, text_color, Align::Center, Align::Start);

    // ---- colour bar
    if (heat) {
        int cx0 = px1 + (int)(fpx * 1.2), cx1 = cx0 + 16;
        for (int y = py0; y <= py1; y++) {
            double t = 1.0 - (y - py0) / (double)std::max(1, py1 - py0);
            for (int x = cx0; x < cx1; x++) c.blend(x, y, viridis(t), 1);
        }
        c.outline(cx0, py0, cx1, py1, frame);
        for (const Tick& t : ct) {
            double y = py1 - (t.value - vmin) / (vmax - vmin) * (py1 - py0);
            c.hline(cx1 + 1, cx1 + 4, (int)std::lround(y), frame);
            draw_text(c, cx1 + 6, y, t.label, fpx, text_color, Align::Start, Align::Center);
        }
        if (!ax.colorbar_label.empty())
            draw_text(c, bx0 + bw - 3, (py0 + py1) / 2.0, ax.colorbar_label, label_px, text_color, Align::End, Align::Center, true);
    }

    if (ax.legend && !legend.empty()) draw_legend(c, legend, px0, py0, px1, py1, points, fpx);
}

}  // namespace detail

inline Canvas render(const Figure& fig) {
    Canvas c(fig.width, fig.height);
    double fpx = fig.font_px;
    int top = 0;
    if (!fig.title.empty()) {
        double tpx = fpx * 1.45;
        draw_text(c, fig.width / 2.0, tpx * 0.4, fig.title, tpx, rgb(20, 20, 20), Align::Center, Align::Start);
        top = (int)(tpx * 1.7);
    }
    int rows = std::max(1, fig.rows), cols = std::max(1, fig.cols);
    double cw = (fig.width - 8.0) / cols, ch = (fig.height - top - 4.0) / rows;
    for (size_t i = 0; i < fig.axes.size() && (int)i < rows * cols; i++) {
        int r = (int)i / cols, k = (int)i % cols;
        detail::render_axes(c, fig.axes[i], (int)(4 + k * cw), (int)(top + r * ch), (int)cw, (int)ch, fpx);
    }
    return c;
}

inline bool save_png(const Figure& fig, const std::string& path) { return render(fig).write_png(path); }

// ------------------------------------------------------------------------------------------------
// Builders for the plots moe.cu writes

// Several series on one axes (log_y: logarithmic value axis).
inline Figure line_figure(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                          std::vector<Series> series, bool log_y = false, int width = 960, int height = 560) {
    Figure f;
    f.width = width;
    f.height = height;
    Axes ax;
    ax.title = title;
    ax.xlabel = xlabel;
    ax.ylabel = ylabel;
    ax.log_y = log_y;
    ax.series = std::move(series);
    f.axes.push_back(std::move(ax));
    return f;
}

// One heatmap panel per matrix, stacked vertically, sharing x values and the colour range.
// matrices[l] is (rows, cols) row-major: e.g. rows = experts, cols = log steps.
inline Figure heatmap_figure(const std::string& title, const std::vector<std::vector<double>>& matrices, int rows,
                             int cols, const std::vector<double>& x, const std::vector<std::string>& panel_titles,
                             const std::string& xlabel, const std::string& ylabel, const std::string& colorbar_label,
                             int width = 960) {
    Figure f;
    f.title = title;
    f.width = width;
    int panels = (int)matrices.size();
    int panel_h = std::clamp(rows * 22 + 110, 200, 380);
    f.height = 50 + panels * panel_h;
    f.rows = std::max(1, panels);
    f.cols = 1;
    double lo = INFINITY, hi = -INFINITY;
    for (const auto& m : matrices) detail::data_range(m, false, lo, hi);
    for (int l = 0; l < panels; l++) {
        Axes ax;
        ax.title = l < (int)panel_titles.size() ? panel_titles[l] : "";
        ax.xlabel = xlabel;
        ax.ylabel = ylabel;
        ax.heat_rows = rows;
        ax.heat_cols = cols;
        ax.heat = matrices[l];
        ax.heat.resize((size_t)rows * cols, NAN);
        ax.heat_x = x;
        ax.vmin = std::isfinite(lo) ? std::min(lo, 0.0) : 0;
        ax.vmax = std::isfinite(hi) ? hi : 1;
        ax.colorbar_label = colorbar_label;
        f.axes.push_back(std::move(ax));
    }
    return f;
}

// A bar chart (histogram over categories) with an optional dashed reference line (NaN: none).
inline Axes bar_axes(const std::string& title, const std::vector<std::string>& categories, const std::vector<double>& values,
                     const std::string& xlabel, const std::string& ylabel, double ref_y = NAN,
                     const std::string& ref_label = "", int color = 0) {
    Axes ax;
    ax.title = title;
    ax.xlabel = xlabel;
    ax.ylabel = ylabel;
    ax.categories = categories;
    BarGroup g;
    g.values = values;
    g.color = color;
    ax.bars.push_back(std::move(g));
    if (std::isfinite(ref_y)) ax.hlines.push_back(RefLine{ref_y, ref_label, rgb(200, 30, 30), true});
    return ax;
}

// Panels in a grid of `cols` columns (rows as needed), each panel_w x panel_h pixels.
inline Figure grid_figure(const std::string& title, std::vector<Axes> axes, int cols, int panel_w = 480, int panel_h = 340) {
    Figure f;
    f.title = title;
    f.cols = std::max(1, std::min(cols, (int)axes.size()));
    f.rows = std::max(1, ((int)axes.size() + f.cols - 1) / f.cols);
    f.width = f.cols * panel_w + 8;
    f.height = f.rows * panel_h + (title.empty() ? 4 : 34);
    f.axes = std::move(axes);
    return f;
}

// Grouped bars: one group per named series, one cluster per category.
inline Figure grouped_bar_figure(const std::string& title, const std::vector<std::string>& categories,
                                 std::vector<BarGroup> groups, const std::string& xlabel, const std::string& ylabel,
                                 double ref_y = NAN, const std::string& ref_label = "", int width = 960, int height = 560) {
    Figure f;
    f.width = width;
    f.height = height;
    Axes ax;
    ax.title = title;
    ax.xlabel = xlabel;
    ax.ylabel = ylabel;
    ax.categories = categories;
    ax.bars = std::move(groups);
    if (std::isfinite(ref_y)) ax.hlines.push_back(RefLine{ref_y, ref_label, rgb(200, 30, 30), true});
    f.axes.push_back(std::move(ax));
    return f;
}

}  // namespace plot
