// tests/png_check.h: reading a PNG back (stb_image) and the pixel counts the plot tests check
// (size, distinct colours, text-like dark pixels, how much of the image is not background).
#pragma once
#include <algorithm>
#include <cstddef>
#include <set>
#include <string>
#include <vector>

#include <stb/stb_image.h>

struct Image {
    int w = 0, h = 0;
    std::vector<unsigned char> rgb;
    bool ok = false;  // the file decoded
    unsigned char at(int x, int y, int k) const { return rgb[3 * ((size_t)y * w + x) + k]; }
};

inline Image load(const std::string& path) {
    Image im;
    int channels = 0;
    unsigned char* data = stbi_load(path.c_str(), &im.w, &im.h, &channels, 3);
    if (!data) return im;
    im.rgb.assign(data, data + (size_t)im.w * im.h * 3);
    stbi_image_free(data);
    im.ok = true;
    return im;
}

inline size_t distinct_colours(const Image& im) {
    std::set<unsigned> s;
    for (size_t i = 0; i < (size_t)im.w * im.h; i++)
        s.insert((unsigned)im.rgb[3 * i] << 16 | (unsigned)im.rgb[3 * i + 1] << 8 | im.rgb[3 * i + 2]);
    return s.size();
}

// Dark (text-like) pixels inside rows [y0, y1).
inline long dark_pixels(const Image& im, int y0, int y1) {
    long n = 0;
    for (int y = std::max(0, y0); y < std::min(im.h, y1); y++)
        for (int x = 0; x < im.w; x++)
            if (im.at(x, y, 0) < 100 && im.at(x, y, 1) < 100 && im.at(x, y, 2) < 100) n++;
    return n;
}

// Share of the pixels that are not (near) white background.
inline double non_white_fraction(const Image& im) {
    size_t n = 0;
    for (size_t i = 0; i < (size_t)im.w * im.h; i++)
        n += im.rgb[3 * i] < 245 || im.rgb[3 * i + 1] < 245 || im.rgb[3 * i + 2] < 245;
    return (double)n / ((double)im.w * im.h);
}
