// The convolution's shape as the kernels of conv_implicit.cu and im2col.cu take it.
#pragma once

struct ConvShape {
    int N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw, groups;
};
// Kernels take the shape as plain ints (portable kernel arguments) and pack it here.
#define CONV_SHAPE_PARAMS int N, int C, int H, int W, int K, int R, int S, int P, int Q, \
    int sh, int sw, int ph, int pw, int dh, int dw, int groups
#define CONV_SHAPE ConvShape s{N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw, groups}
