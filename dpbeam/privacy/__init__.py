"""Privacy kernels: zCDP accounting, noise, private selection and the MST measurement plan."""
