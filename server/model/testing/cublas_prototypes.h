/*
 * The cuBLAS prototypes the cuda engine binds (cuda_ffi.ts CUBLAS_SYMBOLS), as cublas_api.h of
 * CUDA 13 declares them. cuBLAS is not installed on the CPU machines, so cuda_bindings_test.ts
 * checks the bindings against this copy everywhere, and against the real header as well where
 * $CUDA_HOME/include/cublas_api.h exists (the GPU machine, the GPU image's build stage).
 */
cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle);
cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle);
cublasStatus_t CUBLASWINAPI cublasGetVersion_v2(cublasHandle_t handle, int* version);
const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status);
cublasStatus_t CUBLASWINAPI cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype, int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb, long long int strideB, const void* beta, void* C, cudaDataType Ctype, int ldc, long long int strideC, int batchCount, cublasComputeType_t computeType, cublasGemmAlgo_t algo);
