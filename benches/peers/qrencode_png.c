/* The peer for render-vs-qrencode.sh: libqrencode + libpng drawing the same codes our
 * renderer draws (version-4 URL, error correction M, 4-module quiet zone, 8 px per module,
 * 1-bit grayscale PNG), one core, into memory. Prints "<codes> <seconds> <bytes of the last PNG>".
 *
 *   cc -O2 qrencode_png.c -lqrencode -lpng -o qrencode_png && ./qrencode_png 20000
 */
#include <png.h>
#include <qrencode.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MODULE_PX 8
#define QUIET 4

struct buffer { unsigned char *data; size_t len, cap; };

static void write_to_buffer(png_structp png, png_bytep bytes, png_size_t n) {
    struct buffer *out = png_get_io_ptr(png);
    if (out->len + n > out->cap) {
        out->cap = (out->len + n) * 2;
        out->data = realloc(out->data, out->cap);
    }
    memcpy(out->data + out->len, bytes, n);
    out->len += n;
}

static void flush_nothing(png_structp png) { (void)png; }

static size_t draw(const char *text, struct buffer *out) {
    QRcode *code = QRcode_encodeString(text, 0, QR_ECLEVEL_M, QR_MODE_8, 1);
    if (!code) { perror("QRcode_encodeString"); exit(1); }
    int side = (code->width + 2 * QUIET) * MODULE_PX;
    int row_bytes = (side + 7) / 8;
    unsigned char *row = malloc(row_bytes);

    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    out->len = 0;
    png_set_write_fn(png, out, write_to_buffer, flush_nothing);
    png_set_IHDR(png, info, side, side, 1, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < side; y++) {
        memset(row, 0xff, row_bytes);
        int my = y / MODULE_PX - QUIET;
        if (my >= 0 && my < code->width) {
            for (int x = 0; x < side; x++) {
                int mx = x / MODULE_PX - QUIET;
                if (mx >= 0 && mx < code->width && (code->data[my * code->width + mx] & 1))
                    row[x / 8] &= ~(0x80 >> (x % 8));
            }
        }
        png_write_row(png, row);
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    QRcode_free(code);
    return out->len;
}

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 20000;
    struct buffer out = {malloc(4096), 0, 4096};
    char text[64];
    struct timespec start, end;
    size_t last = 0;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < count; i++) {
        snprintf(text, sizeof text, "https://qr.example.com/m/7n42DGM5Tflk9n8mt%07d", i);
        last = draw(text, &out);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
    printf("%d %.6f %zu\n", count, seconds, last);
    return 0;
}
