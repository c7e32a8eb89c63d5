import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// The API is on the same origin in every deployment; `npm run dev` proxies it to the local
// stack so the dev server behaves the same way.
export default defineConfig({
  plugins: [svelte()],
  build: {
    manifest: true,
    target: 'es2022',
    sourcemap: false,
  },
  server: {
    proxy: {
      '/api': { target: process.env.CODERUN_API ?? 'http://127.0.0.1:8080' },
      '/healthz': { target: process.env.CODERUN_API ?? 'http://127.0.0.1:8080' },
    },
  },
});
