// Tests of run/plot.h: every plot kind renders to a PNG that decodes (stb_image) with the expected size
// and visible content: many distinct colours, text pixels in the title area, the series colours.
// The PNGs go to a fresh temporary directory, or to $MOE_PLOT_TEST_DIR when set (to look at them).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

#include "run/plot.h"
#include "tests/png_check.h"

namespace {

std::string out_dir() {
    static std::string dir;
    if (!dir.empty()) return dir;
    if (const char* env = getenv("MOE_PLOT_TEST_DIR")) {
        dir = env;
        std::string cmd = "mkdir -p '" + dir + "'";
        if (system(cmd.c_str()) != 0) dir.clear();
        if (!dir.empty()) return dir;
    }
    char tmpl[] = "/tmp/moe_plot_test_XXXXXX";
    char* d = mkdtemp(tmpl);
    dir = d ? d : "/tmp";
    return dir;
}

// Pixels within `tol` of colour c.
long pixels_near(const Image& im, plot::Color c, int tol = 12) {
    long n = 0;
    for (size_t i = 0; i < (size_t)im.w * im.h; i++)
        if (std::abs(im.rgb[3 * i] - c.r) <= tol && std::abs(im.rgb[3 * i + 1] - c.g) <= tol &&
            std::abs(im.rgb[3 * i + 2] - c.b) <= tol)
            n++;
    return n;
}

plot::Figure loss_figure() {
    plot::Series train, val;
    train.name = "train";
    val.name = "validation";
    val.markers = true;
    for (int s = 0; s <= 2000; s += 10) {
        train.x.push_back(s);
        train.y.push_back(4.2 * std::exp(-s / 400.0) + 1.3 + 0.05 * std::sin(s * 0.37));
        if (s % 200 == 0) {
            val.x.push_back(s);
            val.y.push_back(4.2 * std::exp(-s / 400.0) + 1.45);
        }
    }
    return plot::line_figure("Loss (train and validation)", "step", "cross-entropy (nats)", {train, val}, true);
}

}  // namespace

TEST(Plot, NiceTicks) {
    double step = 0;
    std::vector<double> t = plot::nice_ticks(0, 10, 5, &step);
    EXPECT_DOUBLE_EQ(step, 2);
    ASSERT_EQ(t.size(), 6u);
    EXPECT_DOUBLE_EQ(t.front(), 0);
    EXPECT_DOUBLE_EQ(t.back(), 10);
    t = plot::nice_ticks(0.013, 0.0871, 4, &step);
    EXPECT_DOUBLE_EQ(step, 0.02);
    EXPECT_EQ(plot::format_number(0.04, plot::decimals_for_step(step)), "0.04");
    EXPECT_EQ(plot::decimals_for_step(2.5), 1);
    EXPECT_EQ(plot::format_power_of_ten(-2), "0.01");
    EXPECT_EQ(plot::format_power_of_ten(3), "1000");
    EXPECT_EQ(plot::format_power_of_ten(9), "1e9");
    std::vector<plot::Tick> lt = plot::log_ticks(1.0, 1000.0);
    int majors = 0;
    for (const plot::Tick& k : lt) majors += k.major;
    EXPECT_EQ(majors, 4);
}

TEST(Plot, Viridis) {
    EXPECT_EQ(plot::viridis(0), plot::hex(0x440154));
    EXPECT_EQ(plot::viridis(1), plot::hex(0xfde725));
    EXPECT_EQ(plot::viridis(0.5), plot::hex(0x21918c));
    EXPECT_EQ(plot::viridis(NAN), plot::hex(0x440154));
}

TEST(Plot, TextRenders) {
    plot::Canvas c(200, 40);
    plot::draw_text(c, 5, 5, "Abc 123", 18, plot::rgb(0, 0, 0));
    long dark = 0;
    for (int y = 0; y < 40; y++)
        for (int x = 0; x < 200; x++) dark += c.get(x, y).r < 128;
    EXPECT_GT(dark, 60);
    EXPECT_GT(plot::text_width("Abc 123", 18), 40);
}

TEST(Plot, LinePlotWithLegendLogScale) {
    std::string path = out_dir() + "/line.png";
    plot::Figure f = loss_figure();
    ASSERT_TRUE(plot::save_png(f, path));
    Image im = load(path);
    ASSERT_TRUE(im.ok);
    EXPECT_EQ(im.w, 960);
    EXPECT_EQ(im.h, 560);
    EXPECT_GT(distinct_colours(im), 50u);
    EXPECT_GT(dark_pixels(im, 0, 30), 40);         // the title
    EXPECT_GT(pixels_near(im, plot::palette(0)), 400);  // the train curve
    EXPECT_GT(pixels_near(im, plot::palette(1)), 150);  // validation curve, markers, legend
}

TEST(Plot, HeatmapPanelsWithColourBar) {
    const int E = 8, steps = 40, layers = 2;
    std::vector<std::vector<double>> m(layers, std::vector<double>(E * steps));
    std::vector<double> x;
    for (int j = 0; j < steps; j++) x.push_back(j * 50);
    for (int l = 0; l < layers; l++)
        for (int e = 0; e < E; e++)
            for (int j = 0; j < steps; j++)
                m[l][e * steps + j] = 512.0 / E * (1 + (l + 1) * 0.8 * std::sin(0.7 * e + j * 0.05 * (l + 1)) * std::exp(-j / 20.0));
    plot::Figure f = plot::heatmap_figure("Expert load (tokens per expert per log step)", m, E, steps, x,
                                          {"layer 0", "layer 1"}, "step", "expert", "tokens");
    std::string path = out_dir() + "/heatmap.png";
    ASSERT_TRUE(plot::save_png(f, path));
    Image im = load(path);
    ASSERT_TRUE(im.ok);
    EXPECT_EQ(im.w, f.width);
    EXPECT_EQ(im.h, f.height);
    EXPECT_GT(distinct_colours(im), 100u);
    EXPECT_GT(dark_pixels(im, 0, 30), 40);
    EXPECT_GT(pixels_near(im, plot::viridis(1.0), 20), 20);  // the top of the colour bar at least
    EXPECT_GT(pixels_near(im, plot::viridis(0.0), 20), 20);
}

TEST(Plot, HistogramWithReferenceLine) {
    std::vector<std::string> cats;
    std::vector<double> a, b;
    for (int e = 0; e < 8; e++) {
        cats.push_back(std::to_string(e));
        a.push_back(64 + 40 * std::sin(e * 1.3));
        b.push_back(e == 3 ? 400 : 16);
    }
    std::vector<plot::Axes> panels = {
        plot::bar_axes("layer 0", cats, a, "expert", "tokens (after capacity)", 64, "uniform (N*K/E = 64)"),
        plot::bar_axes("layer 1", cats, b, "expert", "tokens (after capacity)", 64, "uniform (N*K/E = 64)", 2)};
    plot::Figure f = plot::grid_figure("Tokens per expert at the last step", panels, 2);
    std::string path = out_dir() + "/histogram.png";
    ASSERT_TRUE(plot::save_png(f, path));
    Image im = load(path);
    ASSERT_TRUE(im.ok);
    EXPECT_EQ(im.w, f.width);
    EXPECT_EQ(im.h, f.height);
    EXPECT_GT(distinct_colours(im), 30u);
    EXPECT_GT(dark_pixels(im, 0, 30), 40);
    EXPECT_GT(pixels_near(im, plot::palette(0), 4), 1000);  // bars
    EXPECT_GT(pixels_near(im, plot::rgb(200, 30, 30), 10), 100);  // the reference lines
}

TEST(Plot, GroupedBars) {
    std::vector<std::string> cats = {"dense (active)", "top-1", "top-2", "dense (total)"};
    std::vector<plot::BarGroup> g(2);
    g[0].name = "train loss";
    g[0].values = {1.62, 1.55, 1.51, 1.47};
    g[1].name = "validation loss";
    g[1].values = {1.70, 1.64, 1.60, 1.58};
    plot::Figure f = plot::grouped_bar_figure("Final loss per model", cats, g, "", "loss (nats)", NAN, "", 800, 480);
    std::string path = out_dir() + "/grouped_bars.png";
    ASSERT_TRUE(plot::save_png(f, path));
    Image im = load(path);
    ASSERT_TRUE(im.ok);
    EXPECT_EQ(im.w, 800);
    EXPECT_EQ(im.h, 480);
    EXPECT_GT(distinct_colours(im), 30u);
    EXPECT_GT(dark_pixels(im, 0, 30), 40);
    EXPECT_GT(pixels_near(im, plot::palette(0), 4), 2000);
    EXPECT_GT(pixels_near(im, plot::palette(1), 4), 2000);
}

// Panels of line plots (drop rate and router entropy over time per layer; gradient norms of 8 experts, log scale).
TEST(Plot, LinePanelsManySeries) {
    std::vector<plot::Axes> panels(3);
    panels[0].title = "drop rate";
    panels[0].xlabel = "step";
    panels[0].ylabel = "dropped choices / (N*K)";
    panels[1].title = "router entropy";
    panels[1].xlabel = "step";
    panels[1].ylabel = "mean H(p) (nats)";
    panels[2].title = "expert gradient L2 norm (layer 0)";
    panels[2].xlabel = "step";
    panels[2].ylabel = "||grad||";
    panels[2].log_y = true;
    for (int l = 0; l < 2; l++) {
        plot::Series d, h;
        d.name = h.name = "layer " + std::to_string(l);
        for (int s = 0; s <= 1000; s += 25) {
            d.x.push_back(s);
            d.y.push_back(0.3 * std::exp(-s / (200.0 + 300 * l)) + 0.01);
            h.x.push_back(s);
            h.y.push_back(std::log(8.0) * (1 - 0.5 * (1 - std::exp(-s / 300.0)) * (l + 1) / 2));
        }
        panels[0].series.push_back(d);
        panels[1].series.push_back(h);
    }
    plot::Series uniform;
    uniform.name = "ln E (uniform)";
    panels[1].hlines.push_back(plot::RefLine{std::log(8.0), "ln 8 (uniform router)", plot::rgb(120, 120, 120), true});
    for (int e = 0; e < 8; e++) {
        plot::Series g;
        g.name = "expert " + std::to_string(e);
        for (int s = 0; s <= 1000; s += 25) {
            g.x.push_back(s);
            g.y.push_back((e == 5 ? 1e-4 : 0.05) * (1 + e) * std::exp(-s / 700.0));
        }
        g.width = 1.6;
        panels[2].series.push_back(g);
    }
    plot::Figure f = plot::grid_figure("Routing over time", panels, 3, 520, 380);
    std::string path = out_dir() + "/line_panels.png";
    ASSERT_TRUE(plot::save_png(f, path));
    Image im = load(path);
    ASSERT_TRUE(im.ok);
    EXPECT_EQ(im.w, 3 * 520 + 8);
    EXPECT_EQ(im.h, f.height);
    EXPECT_GT(distinct_colours(im), 100u);
    for (int e = 0; e < 8; e++) EXPECT_GT(pixels_near(im, plot::palette(e), 8), 30) << "expert " << e;
}

TEST(Plot, FallbackFontWhenTrueTypeIsMissing) {
    plot::Font& font = plot::Font::get();
    EXPECT_FALSE(font.load("/nonexistent/font.ttf"));
    EXPECT_FALSE(font.truetype());
    std::string path = out_dir() + "/line_fallback_font.png";
    ASSERT_TRUE(plot::save_png(loss_figure(), path));
    Image im = load(path);
    ASSERT_TRUE(im.ok);
    EXPECT_EQ(im.w, 960);
    EXPECT_GT(dark_pixels(im, 0, 30), 40);  // the title, in the built-in font
    // back to the default font for the other tests
    font.load("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
}

TEST(Plot, EmptyAndDegenerateDataDoNotCrash) {
    plot::Series s;
    s.name = "constant";
    s.x = {0, 1, 2};
    s.y = {5, 5, 5};
    plot::Series bad;
    bad.name = "nan";
    bad.x = {0, 1};
    bad.y = {NAN, INFINITY};
    plot::Figure f = plot::line_figure("degenerate", "x", "y", {s, bad}, true, 400, 300);
    EXPECT_EQ(plot::render(f).width(), 400);
    plot::Figure g = plot::line_figure("empty", "x", "y", {}, false, 300, 200);
    EXPECT_EQ(plot::render(g).height(), 200);
    plot::Figure h = plot::heatmap_figure("one column", {{1, 2, 3}}, 3, 1, {100}, {"l0"}, "step", "expert", "");
    EXPECT_GT(plot::render(h).width(), 0);
}
