/**
 * The Device of device.ts on a real GPU: the CUDA runtime (buffers, copies), cuBLAS
 * (cublasGemmStridedBatchedEx) and the project's kernels (kernels.cu), all through Deno FFI and all
 * on the legacy default stream, so operations run in the order they are queued.
 *
 * `openCudaDevice` fails with one CudaUnavailableError naming everything missing: libcudart,
 * libcublas, a GPU (with the runtime's own reason), or the built kernels.
 */
import {
  ATTR_CC_MAJOR,
  ATTR_CC_MINOR,
  CUBLAS_COMPUTE_32F,
  CUBLAS_COMPUTE_32F_FAST_TF32,
  CUBLAS_GEMM_DEFAULT,
  CUBLAS_NAME,
  CUBLAS_NEEDS,
  CUBLAS_OP_N,
  CUBLAS_OP_T,
  CUBLAS_SYMBOLS,
  CUDA_R_16BF,
  CUDA_R_16F,
  CUDA_R_32F,
  CUDART_NAME,
  CUDART_SYMBOLS,
  libraryCandidates,
  MEMCPY_DEVICE_TO_DEVICE,
  MEMCPY_DEVICE_TO_HOST,
  MEMCPY_HOST_TO_DEVICE,
  openFirst,
} from "./cuda_ffi.ts";
import { bindKernels } from "./cuda_kernels.ts";
import {
  checkGemm,
  type Device,
  type DeviceBuffer,
  type DPtr,
  type DType,
  DTYPE_BYTES,
  type Gemm,
  type Kernels,
} from "./device.ts";
import { KERNEL_SYMBOLS, kernelsLibraryPath } from "./kernels_ffi.ts";

type Cudart = Deno.DynamicLibrary<typeof CUDART_SYMBOLS>;
type Cublas = Deno.DynamicLibrary<typeof CUBLAS_SYMBOLS>;
export type KernelLib = Deno.DynamicLibrary<typeof KERNEL_SYMBOLS>;

/** The cuda backend cannot start here; the message lists each missing piece. */
export class CudaUnavailableError extends Error {
  constructor(readonly missing: string[]) {
    super(`backend "cuda" cannot start: ${missing.join("; ")}`);
    this.name = "CudaUnavailableError";
  }
}

export interface CudaDeviceOptions {
  /** GPU ordinal; default $CUDA_DEVICE or 0. */
  device?: number;
  /** Kernel library path; default kernelsLibraryPath(). */
  kernels?: string;
  /** Where to look for the CUDA libraries; default libraryCandidates() of each (tests). */
  cudart?: readonly string[];
  cublas?: readonly string[];
}

/** Opens the GPU, or throws CudaUnavailableError saying everything that is missing. */
export function openCudaDevice(opts: CudaDeviceOptions = {}): Device {
  const missing: string[] = [];
  const rt = openFirst(opts.cudart ?? libraryCandidates(CUDART_NAME), CUDART_SYMBOLS);
  if (!("lib" in rt)) {
    missing.push(
      `no CUDA runtime: ${CUDART_NAME} not found (set CUDA_HOME or LD_LIBRARY_PATH)${
        rt.tried.length ? ` [${rt.tried.join("; ")}]` : ""
      }`,
    );
  }
  const blas = openFirst(
    opts.cublas ?? libraryCandidates(CUBLAS_NAME),
    CUBLAS_SYMBOLS,
    CUBLAS_NEEDS,
  );
  if (!("lib" in blas)) {
    missing.push(
      `no cuBLAS: ${CUBLAS_NAME} not found (set CUDA_HOME or LD_LIBRARY_PATH)${
        blas.tried.length ? ` [${blas.tried.join("; ")}]` : ""
      }`,
    );
  }
  const ordinal = opts.device ?? deviceFromEnv();
  if ("lib" in rt) {
    const gpu = probeGpu(rt.lib, ordinal);
    if (gpu) missing.push(gpu);
  }
  const kernelsPath = opts.kernels ?? kernelsLibraryPath();
  let kernels: KernelLib | null = null;
  try {
    Deno.statSync(kernelsPath);
    // Loads only once libcudart is loaded: the kernels' own NEEDED libcudart.so.13 resolves to it.
    if ("lib" in rt) kernels = Deno.dlopen(kernelsPath, KERNEL_SYMBOLS);
  } catch (e) {
    missing.push(
      e instanceof Deno.errors.NotFound
        ? `kernels not built: ${kernelsPath} is missing (run \`deno task build-cuda\`)`
        : `kernels cannot be loaded from ${kernelsPath}: ${(e as Error).message.split("\n")[0]}`,
    );
  }
  if (missing.length > 0 || !("lib" in rt) || !("lib" in blas) || !kernels) {
    if ("lib" in rt) rt.lib.close();
    if ("lib" in blas) blas.lib.close();
    kernels?.close();
    throw new CudaUnavailableError(missing);
  }
  return new CudaDevice(rt.lib, blas.lib, kernels, ordinal);
}

function deviceFromEnv(): number {
  let v: string | undefined;
  try {
    v = Deno.env.get("CUDA_DEVICE");
  } catch {
    v = undefined;
  }
  if (!v) return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    throw new RangeError(`CUDA_DEVICE must be a non-negative integer: found ${JSON.stringify(v)}`);
  }
  return n;
}

function cString(p: Deno.PointerValue): string {
  return p ? new Deno.UnsafePointerView(p).getCString() : "(null)";
}

function cudaError(rt: Cudart, code: number): string {
  return `${cString(rt.symbols.cudaGetErrorName(code))} (${code}): ${
    cString(rt.symbols.cudaGetErrorString(code))
  }`;
}

/** Why no GPU can be used, or null when `ordinal` is one. */
function probeGpu(rt: Cudart, ordinal: number): string | null {
  const count = new Int32Array(1);
  const rc = rt.symbols.cudaGetDeviceCount(Deno.UnsafePointer.of(count));
  if (rc !== 0) return `no GPU: cudaGetDeviceCount failed with ${cudaError(rt, rc)}`;
  if (count[0] === 0) return "no GPU: the CUDA runtime sees 0 devices";
  if (ordinal >= count[0]) {
    return `no GPU ${ordinal}: the CUDA runtime sees ${count[0]} (CUDA_DEVICE selects one)`;
  }
  return null;
}

class CudaBuffer implements DeviceBuffer {
  constructor(
    readonly dtype: DType,
    readonly length: number,
    readonly ptr: Deno.PointerValue,
  ) {}
  freed = false;
}

export class CudaDevice implements Device {
  readonly name: string;
  readonly kernels: Kernels;
  #allocated = 0;
  #peak = 0;
  readonly #handle: Deno.PointerValue;
  readonly #ordinal: number;
  readonly #scalars = new Float32Array(2); // alpha, beta (host pointer mode)
  readonly #buffers = new Set<CudaBuffer>();
  #disposed = false;

  constructor(
    readonly rt: Cudart,
    readonly blas: Cublas,
    readonly lib: KernelLib,
    ordinal: number,
  ) {
    this.#ordinal = ordinal;
    this.#check(rt.symbols.cudaSetDevice(ordinal), "cudaSetDevice");
    const out = new BigUint64Array(1);
    const status = blas.symbols.cublasCreate_v2(Deno.UnsafePointer.of(out));
    if (status !== 0) {
      throw new Error(
        `cublasCreate failed: ${cString(blas.symbols.cublasGetStatusString(status))}`,
      );
    }
    this.#handle = Deno.UnsafePointer.create(out[0]);
    const ints = new Int32Array(4);
    const p = (i: number) => Deno.UnsafePointer.of(ints.subarray(i, i + 1));
    rt.symbols.cudaDeviceGetAttribute(p(0), ATTR_CC_MAJOR, ordinal);
    rt.symbols.cudaDeviceGetAttribute(p(1), ATTR_CC_MINOR, ordinal);
    rt.symbols.cudaRuntimeGetVersion(p(2));
    rt.symbols.cudaDriverGetVersion(p(3));
    const v = (x: number) => `${Math.floor(x / 1000)}.${(x % 1000) / 10}`;
    this.name = `cuda:${ordinal} (sm_${ints[0]}${ints[1]}, runtime ${v(ints[2])}, driver ${
      v(ints[3])
    })`;
    this.kernels = bindKernels(this, lib);
  }

  get allocatedBytes(): number {
    return this.#allocated;
  }

  get peakBytes(): number {
    return this.#peak;
  }

  /** Pointer to a place in a buffer (bytes = elements x the buffer's element size). */
  ptr(p: DPtr): Deno.PointerValue {
    const b = p.buf as CudaBuffer;
    if (!(b instanceof CudaBuffer) || b.freed) throw new Error("device buffer is freed or foreign");
    if (p.off < 0 || p.off > b.length) {
      throw new RangeError(`offset ${p.off} outside a buffer of ${b.length} elements`);
    }
    return p.off === 0 ? b.ptr : Deno.UnsafePointer.offset(
      b.ptr as Deno.PointerObject,
      p.off * DTYPE_BYTES[b.dtype],
    );
  }

  /** Pointer or null (optional kernel outputs). */
  opt(p: DPtr | null): Deno.PointerValue {
    return p ? this.ptr(p) : null;
  }

  check(code: number, what: string): void {
    this.#check(code, what);
  }

  #check(code: number, what: string): void {
    if (code !== 0) throw new Error(`${what} failed: ${cudaError(this.rt, code)}`);
  }

  alloc(dtype: DType, length: number): DeviceBuffer {
    const bytes = Math.max(1, length) * DTYPE_BYTES[dtype];
    const out = new BigUint64Array(1);
    const rc = this.rt.symbols.cudaMalloc(Deno.UnsafePointer.of(out), BigInt(bytes));
    if (rc !== 0) {
      const free = new BigUint64Array(2);
      this.rt.symbols.cudaMemGetInfo(
        Deno.UnsafePointer.of(free.subarray(0, 1)),
        Deno.UnsafePointer.of(free.subarray(1, 2)),
      );
      throw new Error(
        `cudaMalloc of ${bytes} bytes failed: ${cudaError(this.rt, rc)} (free ${free[0]} of ${
          free[1]
        } bytes; this engine holds ${this.#allocated})`,
      );
    }
    const buf = new CudaBuffer(dtype, length, Deno.UnsafePointer.create(out[0]));
    this.#allocated += bytes;
    this.#peak = Math.max(this.#peak, this.#allocated);
    this.#buffers.add(buf);
    return buf;
  }

  free(buf: DeviceBuffer): void {
    const b = buf as CudaBuffer;
    if (b.freed || !this.#buffers.has(b)) return;
    b.freed = true;
    this.#buffers.delete(b);
    this.#allocated -= Math.max(1, b.length) * DTYPE_BYTES[b.dtype];
    // cudaFree waits for work queued on the buffer (it synchronizes the device).
    this.#check(this.rt.symbols.cudaFree(b.ptr), "cudaFree");
  }

  upload(dst: DPtr, src: Float32Array | Int32Array): void {
    const want = src instanceof Int32Array ? "i32" : "f32";
    if (dst.buf.dtype !== want) {
      throw new TypeError(`upload of ${want} data into a ${dst.buf.dtype} buffer`);
    }
    this.#fits(dst, src.length);
    if (src.length === 0) return;
    this.#check(
      this.rt.symbols.cudaMemcpy(
        this.ptr(dst),
        Deno.UnsafePointer.of(src),
        BigInt(src.byteLength),
        MEMCPY_HOST_TO_DEVICE,
      ),
      "cudaMemcpy (upload)",
    );
  }

  download(src: DPtr, out: Float32Array): void {
    if (src.buf.dtype !== "f32") throw new TypeError(`download of a ${src.buf.dtype} buffer`);
    this.#fits(src, out.length);
    if (out.length === 0) return;
    this.#check(
      this.rt.symbols.cudaMemcpy(
        Deno.UnsafePointer.of(out),
        this.ptr(src),
        BigInt(out.byteLength),
        MEMCPY_DEVICE_TO_HOST,
      ),
      "cudaMemcpy (download)",
    );
  }

  zero(dst: DPtr, n: number): void {
    this.#fits(dst, n);
    if (n === 0) return;
    this.#check(
      this.rt.symbols.cudaMemset(this.ptr(dst), 0, BigInt(n * DTYPE_BYTES[dst.buf.dtype])),
      "cudaMemset",
    );
  }

  copy(dst: DPtr, src: DPtr, n: number): void {
    if (dst.buf.dtype !== src.buf.dtype) throw new TypeError("copy between dtypes");
    this.#fits(dst, n);
    this.#fits(src, n);
    if (n === 0) return;
    this.#check(
      this.rt.symbols.cudaMemcpy(
        this.ptr(dst),
        this.ptr(src),
        BigInt(n * DTYPE_BYTES[dst.buf.dtype]),
        MEMCPY_DEVICE_TO_DEVICE,
      ),
      "cudaMemcpy (device to device)",
    );
  }

  gemm(g: Gemm): void {
    checkGemm(g);
    if (g.m === 0 || g.n === 0) return;
    const t = g.a.buf.dtype;
    const type = t === "bf16" ? CUDA_R_16BF : t === "f16" ? CUDA_R_16F : CUDA_R_32F;
    // Half inputs always multiply on tensor cores with fp32 accumulation; fp32 inputs use TF32
    // tensor cores only when the math mode allows it.
    const compute = t === "f32" && g.math === "tf32"
      ? CUBLAS_COMPUTE_32F_FAST_TF32
      : CUBLAS_COMPUTE_32F;
    this.#scalars[0] = g.alpha;
    this.#scalars[1] = g.beta;
    // cuBLAS is column-major: a row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T,
    // so B goes first and m and n swap; the leading dimensions stay as stored.
    const status = this.blas.symbols.cublasGemmStridedBatchedEx(
      this.#handle,
      g.transB ? CUBLAS_OP_T : CUBLAS_OP_N,
      g.transA ? CUBLAS_OP_T : CUBLAS_OP_N,
      g.n,
      g.m,
      g.k,
      Deno.UnsafePointer.of(this.#scalars.subarray(0, 1)),
      this.ptr(g.b),
      type,
      g.ldb,
      BigInt(g.strideB ?? 0),
      this.ptr(g.a),
      type,
      g.lda,
      BigInt(g.strideA ?? 0),
      Deno.UnsafePointer.of(this.#scalars.subarray(1, 2)),
      this.ptr(g.c),
      CUDA_R_32F,
      g.ldc,
      BigInt(g.strideC ?? 0),
      g.batch ?? 1,
      compute,
      CUBLAS_GEMM_DEFAULT,
    );
    if (status !== 0) {
      throw new Error(
        `cublasGemmStridedBatchedEx (m ${g.m}, n ${g.n}, k ${g.k}, batch ${g.batch ?? 1}) failed: ${
          cString(this.blas.symbols.cublasGetStatusString(status))
        }`,
      );
    }
  }

  get waitsOffThread(): boolean {
    return this.#ordinal === 0;
  }

  async synchronize(): Promise<void> {
    // The nonblocking call runs on FFI's worker thread, whose current device is 0 (the runtime
    // keeps one per thread): for another ordinal, wait on this thread instead.
    const rc = this.#ordinal === 0
      ? await this.rt.symbols.cudaDeviceSynchronizeAsync()
      : this.rt.symbols.cudaDeviceSynchronize();
    this.#check(rc, "cudaDeviceSynchronize");
  }

  /** Bounds check before a native call: a wrong length would write outside the buffer. */
  #fits(p: DPtr, n: number): void {
    if (p.off < 0 || p.off + n > p.buf.length) {
      throw new RangeError(
        `${n} elements at offset ${p.off} do not fit a buffer of ${p.buf.length}`,
      );
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const b of [...this.#buffers]) this.free(b);
    this.blas.symbols.cublasDestroy_v2(this.#handle);
    this.lib.close();
    this.blas.close();
    this.rt.close();
  }
}
