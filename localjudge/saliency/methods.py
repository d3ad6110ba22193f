"""CAM methods, one small class each, computed batched on the backend's device from the target layer's activations
A (B, K, h, w) and, for gradient methods, dS/dA of the explained score S. Formulas follow pytorch-grad-cam's
`get_cam_weights` family (so maps agree with it) and the original papers where it has none (CAM)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-7


class CamMethod:
    """A method's map, before ReLU and normalisation: L = sum_k w_k A_k over the K channels of the target layer's
    activations A (B, K, h, w), with channel weights w from the gradient dS/dA of the explained score S (or, for
    methods that weigh each position, L = sum_k (weight map)_k * A_k). Each subclass is one formula."""

    name = ""
    title = ""  # as its paper names it, in the judge's prompt
    needs_gradients = True
    needs_forward = False  # ScoreCAM runs the model again on masked inputs

    def cam_image(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        weights = self.weights(activations, gradients)
        return (weights[:, :, None, None] * activations).sum(dim=1)

    def weights(self, activations, gradients) -> torch.Tensor:
        raise NotImplementedError


class GradCAM(CamMethod):
    """Grad-CAM (Selvaraju et al., ICCV 2017): w_k = (1/hw) sum_ij dS/dA_kij, the spatial mean of the gradient."""

    name = "gradcam"
    title = "Grad-CAM"

    def weights(self, activations, gradients):
        return gradients.mean(dim=(2, 3))


class CAM(GradCAM):
    """CAM (Zhou et al., CVPR 2016): w_k = w_k^c, the classifier's weight for class c. For a global-average-pool +
    linear head (the only heads CAM is defined for) dS/dA_k = w_k^c / (h*w) everywhere, so the gradient's spatial
    mean times h*w is exactly w_k^c; the card says whether a model's head has that form."""

    name = "cam"
    title = "CAM"

    def weights(self, activations, gradients):
        height, width = activations.shape[2:]
        return gradients.mean(dim=(2, 3)) * (height * width)


class GradCAMPlusPlus(CamMethod):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018): w_k = sum_ij a_kij relu(g_kij) with g = dS/dA and
    a_kij = g_kij^2 / (2 g_kij^2 + (sum_ab A_kab) g_kij^3), the closed form for an exponential score; it assumes
    non-negative activations (their sum is a denominator)."""

    name = "gradcam++"
    title = "Grad-CAM++"

    def weights(self, activations, gradients):
        grads_2 = gradients.pow(2)
        grads_3 = grads_2 * gradients
        sum_activations = activations.sum(dim=(2, 3))
        # eps 1e-6 as pytorch-grad-cam: with gradients near 1e-3 the eps decides alpha, so it must match.
        alpha = grads_2 / (2 * grads_2 + sum_activations[:, :, None, None] * grads_3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (torch.clamp(gradients, min=0) * alpha).sum(dim=(2, 3))


class XGradCAM(CamMethod):
    """XGrad-CAM (Fu et al., BMVC 2020): w_k = sum_ij (A_kij / sum_ab A_kab) dS/dA_kij, the gradient averaged with
    the activations' own weights (which assumes them non-negative)."""

    name = "xgradcam"
    title = "XGrad-CAM"

    def weights(self, activations, gradients):
        sum_activations = activations.sum(dim=(2, 3))
        return (gradients * activations / (sum_activations[:, :, None, None] + EPS)).sum(dim=(2, 3))


class LayerCAM(CamMethod):
    """LayerCAM (Jiang et al., IEEE TIP 2021): L_ij = sum_k relu(dS/dA_kij) A_kij, a weight per position."""

    name = "layercam"
    title = "LayerCAM"

    def cam_image(self, activations, gradients):
        return (torch.clamp(gradients, min=0) * activations).sum(dim=1)


class HiResCAM(CamMethod):
    """HiResCAM (Draelos & Carin, 2020): L_ij = sum_k dS/dA_kij A_kij, the element-wise product summed over
    channels (faithful to the score for heads that end in a linear layer)."""

    name = "hirescam"
    title = "HiResCAM"

    def cam_image(self, activations, gradients):
        return (gradients * activations).sum(dim=1)


class EigenCAM(CamMethod):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): L = the activations (positions x channels, centred) projected on
    their first principal component V_1, L_ij = A_ij . V_1; no gradients, no target.

    numpy's SVD (LAPACK gesdd, as pytorch-grad-cam uses) keeps the sign of the component the same as there."""

    name = "eigencam"
    title = "Eigen-CAM"
    needs_gradients = False

    def cam_image(self, activations, gradients):
        batch, channels = activations.shape[:2]
        flat = activations.reshape(batch, channels, -1).transpose(1, 2).detach().cpu().numpy().astype(np.float32)
        flat = np.nan_to_num(flat) - flat.mean(axis=1, keepdims=True)
        projections = []
        for matrix in flat:  # the same LAPACK call per matrix as pytorch-grad-cam, so the same sign
            _, _, vt = np.linalg.svd(matrix, full_matrices=True)
            projections.append(matrix @ vt[0])
        projected = torch.from_numpy(np.stack(projections)).to(activations.device)
        return projected.reshape(batch, *activations.shape[2:])


class ScoreCAM(CamMethod):
    """Score-CAM (Wang et al., CVPR Workshops 2020): w_k = softmax_k S(X * norm(up(A_k))), each channel, upsampled
    to the input and min-max normalised, masks the input X, and its weight is the softmax (over channels) of the
    explained score on that masked input."""

    name = "scorecam"
    title = "Score-CAM"
    needs_gradients = False
    needs_forward = True
    chunk = 16  # masked inputs per forward pass, as pytorch-grad-cam

    def scores(self, model, batch: torch.Tensor, activations: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
        # align_corners=True: pytorch-grad-cam upsamples with nn.UpsamplingBilinear2d.
        upsampled = F.interpolate(activations, size=batch.shape[2:], mode="bilinear", align_corners=True)
        low = upsampled.amin(dim=(2, 3), keepdim=True)
        high = upsampled.amax(dim=(2, 3), keepdim=True)
        masks = (upsampled - low) / (high - low + 1e-8)
        weights = torch.empty(activations.shape[:2], device=activations.device)
        for index in range(batch.shape[0]):
            masked = batch[index:index + 1] * masks[index, :, None]  # (K, 3, H, W)
            scores = []
            for start in range(0, masked.shape[0], self.chunk):
                outputs = model.forward_outputs(masked[start:start + self.chunk])
                scores.append((outputs * cotangent[index:index + 1]).flatten(1).sum(dim=1))
            weights[index] = torch.softmax(torch.cat(scores), dim=0)
        return weights


METHODS = {cls.name: cls for cls in (CAM, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, EigenCAM, ScoreCAM)}


def normalise_and_upsample(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """As pytorch-grad-cam: ReLU, min-max per map, bilinear resize to the input, min-max again."""

    def min_max(x):
        low = x.amin(dim=(1, 2), keepdim=True)
        return (x - low) / (EPS + (x - low).amax(dim=(1, 2), keepdim=True))

    cams = min_max(torch.clamp(cams.float(), min=0))
    cams = F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return min_max(torch.clamp(cams, min=0))
